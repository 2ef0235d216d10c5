"""Where each training run of a finished bench (or any experiment) spent its wall time, read from
its MLflow record: from the run's start to its first logged point (start-up: Ray Train's
controller and workers, their imports, the data, the model, the first `log_every` steps), the
span of its logged points (the last one carries the final validation), and from its last point
to the run's end (the last checkpoint's upload, the sample grid, Ray Train's shutdown). MLflow's own timestamps, taken outside
the training loop: nothing here restarts a clock.

    python -m benchmarks.bench_record --experiment bench-quick-20261207-174131
    python -m benchmarks.bench_record                 # the newest experiment in the store
    python -m benchmarks.bench_record --smoke         # the newest experiment, first 3 runs

MLFLOW_TRACKING_URI (or --tracking-uri) names the store; `make run` writes ./mlflow.db.
"""
from __future__ import annotations

import argparse
import statistics
import sys

from benchmarks.common import print_table


def first_and_last_point(client, run) -> tuple[int, int, int] | None:
    """(first timestamp, its step, last timestamp) over every metric the run logged while it
    trained, in ms: `genbench eval` logs into the training run later, after its end time."""
    first = last = step = None
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            if m.timestamp > run.info.end_time:
                continue
            if first is None or m.timestamp < first:
                first, step = m.timestamp, m.step
            last = m.timestamp if last is None else max(last, m.timestamp)
    return None if first is None else (first, step, last)


def rows_of(client, experiment_id: str, limit: int | None = None) -> list[list[object]]:
    from pipeline import schema

    trains = (schema.TRAIN, schema.SCALING, schema.TUNE_TRIAL)   # the kinds of run that train
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"],
                              max_results=1000)
    rows = []
    for run in runs:
        kind = run.data.tags.get(schema.KIND)
        if kind not in trains or run.info.end_time is None:
            continue
        points = first_and_last_point(client, run)
        if points is None:
            continue
        first, step, last = points
        start, end = run.info.start_time, run.info.end_time
        rows.append([run.info.run_name, kind, run.data.params.get("train.total_steps", "?"),
                     f"{(first - start) / 1000:.1f}", step, f"{(last - first) / 1000:.1f}",
                     f"{(end - last) / 1000:.1f}", f"{(end - start) / 1000:.1f}"])
        if limit and len(rows) >= limit:
            break
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", help="MLflow experiment (default: the newest in the store)")
    p.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--smoke", action="store_true", help="the first 3 training runs only")
    args = p.parse_args(argv)
    from pipeline import schema, tracking
    from pipeline.errors import ConfigError

    client = tracking.client(args.tracking_uri)
    if args.experiment:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            raise ConfigError(f"no experiment {args.experiment!r} in "
                              f"{args.tracking_uri or tracking.tracking_uri()}")
    else:
        found = client.search_experiments(order_by=["creation_time DESC"], max_results=1)
        if not found:
            raise ConfigError("no experiment in the store: run a bench first, or name the "
                              "store with --tracking-uri")
        exp = found[0]
    rows = rows_of(client, exp.experiment_id, limit=3 if args.smoke else None)
    print(f"experiment {exp.name!r}: each training run's wall time, from MLflow's timestamps")
    print_table(["run", "kind", "steps", "start to first point s", "first point's step",
                 "first to last point s", "last point to end s", "total s"], rows, right=True)
    if rows:
        ups = [float(r[3]) for r in rows if r[1] != schema.TUNE_TRIAL]
        if ups:
            print(f"\nstart to first point, Ray Train runs: median {statistics.median(ups):.1f} s "
                  f"(min {min(ups):.1f}, max {max(ups):.1f}, {len(ups)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

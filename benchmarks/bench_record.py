"""Where each training run of a finished bench (or any experiment) spent its wall time, read from
its MLflow record: from the run's start to its first logged point (start-up: Ray Train's
controller and workers or a warm slot (pipeline/warm.py), the data, the model, the first
`log_every` steps; and, less those steps at the run's own pace, to the end of step 1), the
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


def logged_points(client, run) -> list[tuple[int, int]]:
    """(step, first timestamp in ms) of each step at which the run logged while it trained,
    by step: `genbench eval` logs into the training run later, after its end time."""
    first_at: dict[int, int] = {}
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            if m.timestamp <= run.info.end_time:
                first_at[m.step] = min(m.timestamp, first_at.get(m.step, m.timestamp))
    return sorted(first_at.items())


def seconds_per_step(points: list[tuple[int, int]]) -> float | None:
    """The median pace between consecutive logged points, the last interval left out (it holds
    the final validation); None with fewer than three points."""
    paces = [(t1 - t0) / 1000 / (s1 - s0)
             for (s0, t0), (s1, t1) in zip(points[:-2], points[1:-1]) if s1 > s0]
    return statistics.median(paces) if paces else None


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
        points = logged_points(client, run)
        if not points:
            continue
        (step, first), last = points[0], points[-1][1]
        start, end = run.info.start_time, run.info.end_time
        pace = seconds_per_step(points)
        # start-up: the run's start to the end of its first step, the first point's earlier
        # steps taken off at the run's own pace
        up = f"{(first - start) / 1000 - (step - 1) * pace:.1f}" if pace is not None else "-"
        rows.append([run.info.run_name, kind, run.data.tags.get(schema.EXECUTOR, "Ray Train"),
                     run.data.params.get("train.total_steps", "?"),
                     f"{(first - start) / 1000:.1f}", step, up, f"{(last - first) / 1000:.1f}",
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
    print_table(["run", "kind", "executor", "steps", "start to first point s",
                 "first point's step", "start-up to step 1 s", "first to last point s",
                 "last point to end s", "total s"], rows, right=True)
    for executor in sorted({r[2] for r in rows}):
        ups = [float(r[6]) for r in rows
               if r[1] != schema.TUNE_TRIAL and r[2] == executor and r[6] != "-"]
        if ups:
            print(f"start-up to step 1, {executor} runs: median {statistics.median(ups):.1f} s "
                  f"(min {min(ups):.1f}, max {max(ups):.1f}, {len(ups)} runs)")
    print("(start-up to step 1: the start to the first point, less the steps before it at the "
          "run's median pace between points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

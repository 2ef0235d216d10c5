"""Training throughput: `genbench train` (Ray Train, 1 worker) against a plain PyTorch loop, for
every registered family, in one run.

- plain: a bare loop over the same in-memory data and family code (build, make_optimizers,
  loss), same batch and thread count, in its own process; images/s from step `log_every` to
  the last step. It runs before and after each genbench run: plain, genbench, plain, ...,
  with --repeats genbench runs (--repeats-of for one family).
- ratio: each genbench run against the mean of the two plain runs either side of it (a
  paired comparison), and the median of those pair ratios. On a shared VM the same loop's
  speed drifts by 10-20% from one minute to the next, more than the overhead measured: a
  pair shares its minutes, and the median is not moved by one disturbed run. The ratio of
  the two sides' means is given too (every run in brackets).
- genbench: `genbench train` in this process (one local Ray for all families), with
  checkpoints every `--checkpoint-every` steps (Ray reports included) and validation off.
  Wall-clock images/s from the first to the last logged step, from MLflow's metric timestamps:
  measured from outside the loop, Ray start-up excluded.
- logged/wall: the time-weighted mean of the images_per_s that genbench logged over the same
  steps, against the wall-clock figure (should be 1.00: images_per_s is wall-clock).
- first log s: from the `genbench train` call to its first logged step: Ray Train's start
  (controller, worker, process group), the worker's imports and data, the first log_every steps.

    python -m benchmarks.train_throughput [--steps 100] [--families ae,vae] [--small] [--gpu]
    python -m benchmarks.train_throughput --gpu --steps 3000 --log-every 100 --checkpoint-every 1000
    python -m benchmarks.train_throughput --smoke --families ae   # does it run? (tiny, 6 steps)
    # 2 CPU cores, every family in one run (~45 min; smaller autoregressive nets, fewer of
    # their steps, more pairs of the fast families):
    python -m benchmarks.train_throughput --steps 500 --steps-of gan=300 --steps-of pixelcnn=120 \
        --steps-of transformer=60 --repeats 3 --repeats-of ae=6 --repeats-of vae=6 \
        --repeats-of gan=4 --set pixelcnn.channels=16 --set pixelcnn.layers=4 \
        --set pixelcnn.head_channels=32 --set transformer.d_model=32 --set transformer.layers=2 \
        --set transformer.heads=2

--against EXPERIMENT: no new genbench runs; each finished training run of that MLflow experiment
(e.g. a `genbench bench --preset gpu --gpu` one) against the plain loop with the run's own
config (from its checkpoint). Its wall-clock figure then includes what the bench's runs do
between log points: validation, sample grids, checkpoints.

    python -m benchmarks.train_throughput --gpu --against gpu-bench --steps 400

A GPU runs hundreds of steps a second: give it enough steps that the window lasts tens of
seconds (MLflow timestamps are whole milliseconds, and the first steps include warm-up).

On a busy machine the numbers move; run it on a quiet one, and say what else was running.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (add_smoke, config, family_sets, plain_loop, print_table,
                               private_mlflow, tiny_sets, wall_clock)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {"steps": 6, "log_every": 2, "checkpoint_every": 4, "batch": 16}


def sets_of(name: str, args) -> list[str]:
    """KEY=VALUE overrides for one family: its tiny size (--small, --smoke), then --set
    (family keys only where they belong), then --batch."""
    sets = (tiny_sets(name) if args.small else []) + family_sets(name, args.set)
    return sets + [f"train.batch_size={args.batch}"] if args.batch else sets


def steps_of(name: str, args) -> int:
    """--steps, or the family's own --steps-of count."""
    return own_count(name, args.steps_of, args.steps)


def own_count(name: str, pairs: list[str], default: int) -> int:
    """The count a FAMILY=N option gives this family, or the default."""
    own = dict(kv.split("=", 1) for kv in pairs)
    return int(own.get(name, default))


def pair_ratios(plains: list[float], ours: list[float]) -> list[float]:
    """Each genbench run (ours[i], between plains[i] and plains[i + 1]) against the mean of the
    two plain runs either side of it."""
    return [o / ((a + b) / 2) for o, a, b in zip(ours, plains, plains[1:])]


def plain_subprocess(name: str, steps: int, args, threads: int, env: dict) -> dict:
    """The plain loop for one family in its own process; env gives its config: the overrides
    (GENBENCH_BENCH_SETS) or a whole run's config (GENBENCH_BENCH_CONFIG)."""
    cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--plain", name, "--steps",
           str(steps), "--log-every", str(args.log_every), "--threads", str(threads)]
    proc = subprocess.run(cmd + (["--gpu"] if args.gpu else []), capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env})  # cwd: benchmarks importable
    if proc.returncode != 0:
        raise SystemExit(f"plain loop for {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def genbench_run(name: str, sets: list[str], args, uri: str) -> dict:
    """`genbench train` in this process; its figures from the run's MLflow metrics."""
    from mlflow.tracking import MlflowClient

    from genbench.cli import main

    argv = ["train", "--model", name, "--steps", str(steps_of(name, args)), "--experiment", name,
            "--set", f"train.log_every={args.log_every}",
            "--set", f"train.checkpoint_every={args.checkpoint_every}",
            "--set", "train.eval_every=1000000000", "--storage-path", args.storage]
    if args.address:
        argv += ["--address", args.address]
    for kv in sets:
        argv += ["--set", kv]
    if args.gpu:
        argv.append("--gpu")
    out, err = io.StringIO(), io.StringIO()
    started = time.time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"genbench train --model {name} failed ({code}):\n{err.getvalue()}")
    c = MlflowClient(uri)
    ours = wall_clock(c, c.search_runs([c.get_experiment_by_name(name).experiment_id])[0])
    # From the command to its first logged step: Ray Train's start (controller, worker, process
    # group), the worker's imports and data, and the first log_every steps.
    ours["first_log_s"] = ours.pop("first_timestamp") - started
    return ours


def runs_text(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values)


def against(args) -> None:
    """Every finished training run of experiment args.against against the plain loop with the
    run's own config (the config its last checkpoint carries)."""
    from mlflow.tracking import MlflowClient

    from eval.load import download_checkpoint
    from pipeline.config import Config

    c = MlflowClient()
    exp = c.get_experiment_by_name(args.against)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {args.against!r} at {c.tracking_uri}")
    runs = [r for r in c.search_runs([exp.experiment_id], order_by=["attributes.start_time"])
            if r.data.tags.get("genbench.kind") == "train" and r.info.status == "FINISHED"]
    threads = 1 if args.gpu else os.cpu_count()
    # --plain-json: plain-loop figures taken earlier (one per line, as `--plain` prints them)
    known = {}
    for line in open(args.plain_json) if args.plain_json else []:
        row = json.loads(line)
        known[row["family"]] = row
    device = "1 GPU" if args.gpu else f"CPU, {os.cpu_count()} cores, {threads} threads"
    print(f"\ntraining throughput of experiment {args.against!r} ({device}): each run's "
          f"wall-clock images/s (MLflow timestamps, first to last logged step) against the "
          f"plain loop with the run's config ({args.steps} steps, images/s from step "
          f"{args.log_every})")
    print_table(["run", "family", "batch", "plain img/s", "genbench wall-clock img/s", "ratio",
                 "logged / wall"], [])
    for run in runs:
        if "images_per_s" not in run.data.metrics:
            continue
        cfg = Config.from_dict(download_checkpoint(run.info.run_id)["config"])
        t = cfg.train
        if t.workers != 1 or t.gpu != args.gpu or t.conditional:  # the plain loop is neither
            continue
        ours = wall_clock(c, run)
        plain = known.get(cfg.model)
        if (plain is None or plain["batch"] != t.batch_size
                or plain.get("config") != cfg.to_dict()[cfg.model]):
            plain = plain_subprocess(cfg.model, args.steps, args, threads,
                                     {"GENBENCH_BENCH_CONFIG": json.dumps(cfg.to_dict())})
        print(f"| {run.info.run_name} | {cfg.model} | {ours['batch']} | "
              f"{plain['images_per_s']:.0f} | {ours['images_per_s']:.0f} (steps "
              f"{ours['first_step']}-{ours['last_step']}) | "
              f"{ours['images_per_s'] / plain['images_per_s']:.3f} | "
              f"{ours['logged_images_per_s'] / ours['images_per_s']:.3f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", help="comma-separated (default: every registered family)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--steps-of", action="append", default=[], metavar="FAMILY=N",
                    help="another step count for one family (a slow one on CPU)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1,
                    help="genbench runs per family, each followed by a plain run (default 1)")
    ap.add_argument("--repeats-of", action="append", default=[], metavar="FAMILY=N",
                    help="another number of genbench runs for one family")
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--batch", type=int, help="batch size (default: the config's)")
    ap.add_argument("--small", action="store_true",
                    help="each family's tiny size (its TINY), the real step counts")
    add_smoke(ap)
    ap.add_argument("--address", help="Ray cluster address for the genbench runs (default: "
                    "RAY_ADDRESS, or a local Ray)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every family (family keys only for theirs)")
    ap.add_argument("--gpu", action="store_true", help="one GPU (bf16 autocast) for both loops")
    ap.add_argument("--against", metavar="EXPERIMENT",
                    help="compare the finished training runs of this MLflow experiment (e.g. a "
                         "bench's) with the plain loop, instead of starting new runs")
    ap.add_argument("--plain-json", metavar="FILE",
                    help="with --against: plain-loop figures measured earlier, one JSON line "
                         "per family as --plain prints them (others are measured now)")
    ap.add_argument("--plain", help=argparse.SUPPRESS)  # internal: the plain loop, as JSON
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:  # the tiny size, a few steps, one genbench run per family
        args.small, args.repeats, args.repeats_of, args.steps_of = True, 1, [], []
        args.steps, args.log_every = SMOKE["steps"], SMOKE["log_every"]
        args.checkpoint_every, args.batch = SMOKE["checkpoint_every"], args.batch or SMOKE["batch"]
    if args.plain:
        if os.environ.get("GENBENCH_BENCH_CONFIG"):  # --against: a run's own config
            from pipeline.config import Config
            raw = json.loads(os.environ["GENBENCH_BENCH_CONFIG"])
            raw["train"]["steps"] = args.steps
            cfg = Config.from_dict(raw)
        else:
            cfg = config(args.plain, json.loads(os.environ.get("GENBENCH_BENCH_SETS", "[]")),
                         args.steps)
        print(json.dumps(plain_loop(cfg, args.log_every, args.gpu, args.threads)))
        return
    if args.against:
        against(args)
        return

    from pipeline.models import FAMILIES

    names = args.families.split(",") if args.families else list(FAMILIES)
    # genbench's worker gets the cluster's CPUs (1 thread with a GPU): the plain loop too.
    threads = 1 if args.gpu else os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        uri = private_mlflow(tmp)
        args.storage = f"{tmp}/ray_results"
        for name in names:
            sets = sets_of(name, args)
            # plain, genbench, plain, ... plain: every genbench run between two plain ones, so a
            # machine whose speed drifts from minute to minute (a shared VM) moves both sides of
            # each pair alike; the median pair ratio is not moved by one disturbed run.
            own = {"GENBENCH_BENCH_SETS": json.dumps(sets)}
            plains = [plain_subprocess(name, steps_of(name, args), args, threads, own)]
            ours = []
            for _ in range(own_count(name, args.repeats_of, args.repeats)):
                ours.append(genbench_run(name, sets, args, uri))
                plains.append(plain_subprocess(name, steps_of(name, args), args, threads, own))
            plain = {**plains[0], "runs": [p["images_per_s"] for p in plains]}
            plain["images_per_s"] = statistics.mean(plain["runs"])
            mean = {k: statistics.mean(o[k] for o in ours) for k in
                    ("images_per_s", "logged_images_per_s", "first_log_s")}
            runs = [o["images_per_s"] for o in ours]
            pairs = pair_ratios(plain["runs"], runs)
            rows.append((name, plain, {**ours[0], **mean, "runs": runs, "pairs": pairs}))
            print(f"  measured {name}: plain {runs_text(plain['runs'])} img/s, genbench "
                  f"{runs_text(runs)} img/s, pair ratios "
                  f"{' / '.join(f'{r:.3f}' for r in pairs)}", file=sys.stderr, flush=True)
    device = "1 GPU" if args.gpu else f"CPU, {os.cpu_count()} cores, {threads} threads"
    counts = ", ".join(f"{name} {steps_of(name, args)}" for name, _, _ in rows)
    print(f"\ntraining throughput, 1 worker, {device}; steps: {counts}; images/s from step "
          f"{args.log_every} to the last; genbench logs every {args.log_every} steps and "
          f"checkpoints every {args.checkpoint_every}{' (tiny sizes)' if args.small else ''}; "
          f"each genbench run between two plain runs; img/s: the mean of each side (every run "
          f"in brackets, in order); ratio: the median of the pair ratios (each genbench run / "
          f"the mean of the plain runs either side)")
    print_table(["family", "batch", "plain img/s", "genbench wall-clock img/s",
                 "ratio (median pair)", "pair ratios", "ratio of means", "logged / wall",
                 "first log s"],
                [[name, ours["batch"], f"{plain['images_per_s']:.0f} ({runs_text(plain['runs'])})",
                  f"{ours['images_per_s']:.0f} ({runs_text(ours['runs'])}; steps "
                  f"{ours['first_step']}-{ours['last_step']})",
                  f"{statistics.median(ours['pairs']):.3f}",
                  " / ".join(f"{r:.3f}" for r in ours["pairs"]),
                  f"{ours['images_per_s'] / plain['images_per_s']:.3f}",
                  f"{ours['logged_images_per_s'] / ours['images_per_s']:.3f}",
                  f"{ours['first_log_s']:.1f}"] for name, plain, ours in rows])


if __name__ == "__main__":
    main()

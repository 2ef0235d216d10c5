"""Where a `genbench train` run's time goes before its first step, beside Ray's own floor.

Each measurement is a fresh Python process, as a user's command is, with its own local Ray and a
private MLflow store; the times come from outside the thing timed: the launch and exit seen by
this script, marks the child writes (time.time()) when each phase returns, and the MLflow
timestamp of the first logged step.

    floor     a trivial TorchTrainer (1 worker that writes one line): imports of ray and
              ray.train.torch, Ray started as genbench starts it (pipeline.cluster.init_ray),
              fit() to the worker's first line, and the rest of fit()
    genbench  `genbench train --model F --workers 1 --steps S` (log_every 1), in process, with
              its phases marked: imports, the dataset, Ray, the MLflow run, fit() to the first
              logged step (Ray Train's controller and worker group, the worker's imports, data,
              model and one step), the remaining steps, and the end

    python -m benchmarks.startup [--family vae] [--steps 20] [--repeats 2]
    python -m benchmarks.startup --smoke            # does it run? (ae, 3 steps, 1 repeat)

Medians over --repeats, floor and genbench alternating. Run it on a quiet machine: start-up is
mostly single-threaded Python and process creation, which other work slows at once.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import add_smoke, print_table, tiny_sets

MARKS_ENV = "GENBENCH_STARTUP_MARKS"   # the file the child appends its marks to

# The child's code. mark(name): the moment a phase ended, as one JSON line.
_MARK = ("import json, os, sys, time\n"
         "def mark(name, t=None):\n"
         "    with open(os.environ['" + MARKS_ENV + "'], 'a') as f:\n"
         "        f.write(json.dumps([name, t or time.time()]) + '\\n')\n"
         "mark('interpreter up')\n")

FLOOR = _MARK + """
import ray, ray.train.torch
mark('imports')
from pipeline.cluster import init_ray
init_ray()
mark('Ray started')
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

def first_line(config):
    with open(config['marks'], 'a') as f:
        f.write(json.dumps(['first step (worker)', time.time()]) + '\\n')

trainer = TorchTrainer(first_line, train_loop_config={'marks': os.environ['""" + MARKS_ENV + """']},
                       scaling_config=ScalingConfig(num_workers=1),
                       run_config=RunConfig(storage_path=sys.argv[1], name='floor'))
mark('trainer built')
trainer.fit()
mark('fit() returned')
ray.shutdown()
mark('Ray stopped')
"""

GENBENCH = _MARK + """
from genbench.cli import main
from pipeline import launch, tracking
mark('imports')

def marked(module, name, before=None, after=None):
    fn = getattr(module, name)
    def wrapper(*args, **kwargs):
        if before:
            mark(before)
        out = fn(*args, **kwargs)
        if after:
            mark(after)
        return out
    setattr(module, name, wrapper)

marked(launch, 'load_train_split', after='dataset loaded')
marked(launch, 'init_ray', after='Ray started')
marked(tracking, 'start_run', after='MLflow run created')
marked(launch, 'make_trainer', after='trainer built')
marked(launch, 'fit_interruptibly', after='fit() returned')
code = main(sys.argv[1:])
mark('Ray stopped')
sys.exit(code)
"""

# The rows of the table: (label, from mark, to mark); "launch" and "exit" are this script's.
ROWS = (
    ("start Python", "launch", "interpreter up"),
    ("imports", "interpreter up", "imports"),
    ("load the dataset", "imports", "dataset loaded"),
    ("start Ray (init_ray)", ("dataset loaded", "imports"), "Ray started"),
    ("create the MLflow run", "Ray started", "MLflow run created"),
    ("build the trainer", ("MLflow run created", "Ray started"), "trainer built"),
    ("fit() to the first step", "trainer built", "first step (worker)"),
    ("the other steps", "first step (worker)", "last step (worker)"),
    ("end of fit()", ("last step (worker)", "first step (worker)"), "fit() returned"),
    ("stop Ray, exit", "fit() returned", "exit"),
)
TOTALS = (("launch to first step", "launch", "first step (worker)"),
          ("launch to exit", "launch", "exit"))


def run_child(code: str, argv: list[str], workdir: Path, env: dict) -> dict[str, float]:
    """{mark: seconds since epoch} of one child process, with launch and exit."""
    marks = workdir / f"marks-{time.time_ns()}.jsonl"
    env = {**env, MARKS_ENV: str(marks)}
    launch = time.time()
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=workdir, env=env,
                          capture_output=True, text=True)
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"startup: the child failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    out = {"launch": launch, "exit": end}
    for line in marks.read_text().splitlines():
        name, t = json.loads(line)
        out.setdefault(name, t)
    return out


def logged_steps(uri: str) -> tuple[float, float]:
    """The MLflow timestamps (s) of the only run's first and last logged step."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("startup").experiment_id])
    points = sorted(client.get_metric_history(run.info.run_id, "images_per_s"), key=lambda m: m.step)
    return points[0].timestamp / 1000, points[-1].timestamp / 1000


def measure_genbench(family: str, steps: int, workdir: Path, env: dict) -> dict[str, float]:
    uri = f"sqlite:///{workdir}/mlflow-{time.time_ns()}.db"
    argv = ["train", "--model", family, "--workers", "1", "--steps", str(steps),
            "--experiment", "startup", "--set", "train.log_every=1",
            "--set", "train.eval_every=1000000", "--set", "train.checkpoint_every=1000000",
            *[a for s in tiny_sets(family) for a in ("--set", s)]]
    marks = run_child(GENBENCH, argv, workdir, {**env, "MLFLOW_TRACKING_URI": uri})
    marks["first step (worker)"], marks["last step (worker)"] = logged_steps(uri)
    return marks


def phase(marks: dict, start, end) -> float | None:
    start = next((s for s in ((start,) if isinstance(start, str) else start) if s in marks), None)
    return marks[end] - marks[start] if start and end in marks else None


def median(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):.2f}" if values else "—"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="vae")
    p.add_argument("--steps", type=int, default=20, help="training steps of the genbench run")
    p.add_argument("--repeats", type=int, default=2)
    add_smoke(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.family, args.steps, args.repeats = "ae", 3, 1
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", MARKS_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                      env.get("PYTHONPATH")]))
    floors, runs = [], []
    with tempfile.TemporaryDirectory(prefix="genbench-startup-") as tmp:
        workdir = Path(tmp)
        for i in range(args.repeats):
            print(f"repeat {i + 1}/{args.repeats}: floor, then genbench train --model "
                  f"{args.family}", file=sys.stderr, flush=True)
            floors.append(run_child(FLOOR, [str(workdir / "ray_results")], workdir, env))
            runs.append(measure_genbench(args.family, args.steps, workdir, env))
    print(f"\nStart-up of `genbench train --model {args.family} --workers 1 --steps "
          f"{args.steps}` and of a trivial TorchTrainer (Ray's floor), seconds, median of "
          f"{args.repeats}; {os.cpu_count()} CPUs\n")
    rows = [(label, median([phase(m, a, b) for m in floors]),
             median([phase(m, a, b) for m in runs])) for label, a, b in ROWS + TOTALS]
    print_table(("phase", "trivial TorchTrainer", f"genbench train ({args.family})"), rows,
                right=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

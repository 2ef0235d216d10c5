"""What a sweep costs beyond training, and what ASHA saves. Runs real `genbench tune` sweeps
(in this process, one local Ray with --cpus CPUs, a private MLflow store) and reads the numbers
back from MLflow:

1. Fixed overhead per trial = trial wall time (Tune's trial start to its end, measured by the
   sweep driver) minus training time (fit()'s own clock, from its first step to its last report),
   for single-worker trials (the loop runs inside the trial) and multi-worker trials (a
   TorchTrainer inside the trial). "Amortised" spreads the sweep's whole wall time (its parent
   run's life: Tuner start, trial processes, results written) over the trials:
   (sweep wall x trials at a time - sum of training) / trials.
2. ASHA against FIFO on the same 8-sample VAE sweep (same seed, so the same 8 configs): the
   compute each spent (optimizer steps and training seconds summed over trials) and the best
   validation bits/dim each found.

    .venv/bin/python -m benchmarks.tune_overhead [--cpus 2] [--steps 300] [--samples 8]
    .venv/bin/python -m benchmarks.tune_overhead --smoke    # does it run? (tiny, 1 trial each)
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time

from benchmarks.common import add_smoke, print_table, private_mlflow, start_ray, tiny_sets

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

VAE = ["--model", "vae", "--set", "vae.width=16", "--set", "vae.latent_dim=8",
       "--set", "train.batch_size=64"]


def sweep(experiment: str, argv: list[str]) -> dict:
    """Run one sweep through the CLI; return its parent and child runs' numbers."""
    from mlflow.tracking import MlflowClient

    from pipeline import tracking
    from genbench.cli import main

    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # each sweep's own summary: stderr
        rc = main(["tune", "--experiment", experiment, *argv])
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"sweep {experiment} failed with exit code {rc}")
    c = MlflowClient(tracking.tracking_uri())
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("genbench.kind") == "tune")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    metric = parent.data.params["tune.metric"]
    trials = []
    for ch in children:
        m = ch.data.metrics
        steps = max((h.step for h in c.get_metric_history(ch.info.run_id, metric)), default=0)
        trials.append({"train_s": m["train_seconds"], "trial_s": m["trial_seconds"],
                       "steps": steps, "value": m[metric],
                       "status": ch.data.tags["genbench.trial_status"]})
    tuner_wall = (parent.info.end_time - parent.info.start_time) / 1000  # parent run's life
    return {"wall": wall, "tuner_wall": tuner_wall, "trials": trials, "metric": metric,
            "best": float(parent.data.metrics[f"best_{metric}"])}


def overhead_row(name: str, result: dict, concurrency: int) -> list:
    t = result["trials"]
    in_trial = [x["trial_s"] - x["train_s"] for x in t]
    train = sum(x["train_s"] for x in t)
    amortised = (result["tuner_wall"] * concurrency - train) / len(t)
    return [name, len(t), concurrency, f"{statistics.mean(x['train_s'] for x in t):.1f}",
            f"{statistics.mean(x['trial_s'] for x in t):.1f}",
            f"{statistics.mean(in_trial):.1f} (min {min(in_trial):.1f}, max {max(in_trial):.1f})",
            f"{amortised:.1f}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, default=2,
                   help="CPUs of the local Ray it starts (not used with --address or a Ray "
                        "this process already runs)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, or a local Ray)")
    p.add_argument("--steps", type=int, default=300, help="steps per trial, ASHA vs FIFO")
    p.add_argument("--samples", type=int, default=8, help="trials, ASHA vs FIFO")
    p.add_argument("--overhead-steps", type=int, default=40)
    add_smoke(p)
    args = p.parse_args(argv)
    vae, direct_samples, multi_samples = VAE, 4, 2
    if args.smoke:  # the tiny VAE, one trial per sweep, 2 steps: a sweep's trial reports,
        # validates and checkpoints at every step of so short a run
        vae = ["--model", "vae", *[a for kv in tiny_sets("vae") for a in ("--set", kv)],
               "--set", "train.batch_size=16"]
        direct_samples, multi_samples = 1, 1
        args.steps, args.samples, args.overhead_steps = 2, 1, 2

    import ray
    work = tempfile.mkdtemp(prefix="genbench-tune-bench-")
    os.chdir(work)
    private_mlflow(work)
    for name in ("ray", "ray.tune", "ray.train"):  # as `genbench tune` does: quiet Ray
        logging.getLogger(name).setLevel(logging.ERROR)
    started = start_ray(args.address, args.cpus)
    cpus = int(ray.cluster_resources().get("CPU", args.cpus))
    print(f"# tune overhead benchmark ({cpus} CPUs, Ray {ray.__version__}); work dir {work}",
          file=sys.stderr)

    s = str(args.overhead_steps)
    direct = sweep("overhead-direct", [*vae, "--samples", str(direct_samples), "--steps", s,
                                       "--scheduler", "fifo"])
    multi = sweep("overhead-multi", [*vae, "--samples", str(multi_samples), "--steps", s,
                                     "--scheduler", "fifo", "--workers-per-trial", "2"])
    runs = {name: sweep(f"vae-{name}", [*vae, "--samples", str(args.samples), "--steps",
                                        str(args.steps), "--scheduler", name])
            for name in ("fifo", "asha")}
    if started:
        ray.shutdown()

    width = "tiny VAE, batch 16" if args.smoke else "VAE width 16, batch 64"
    print(f"\n## Fixed overhead per trial ({width}, {s} steps, FIFO; seconds)\n")
    print_table(["trials", "n", "concurrent", "training", "trial wall", "trial wall - training",
                 "amortised overhead"],
                [overhead_row("single-worker, loop in the trial", direct, cpus),
                 overhead_row("2 workers, TorchTrainer in the trial", multi, max(1, cpus // 2))])
    print(f"\n## ASHA vs FIFO: the same {args.samples}-sample VAE sweep, {args.steps} steps "
          f"per trial\n")
    print_table(["scheduler", "steps spent", "training s", "sweep wall s", "early-stopped",
                 "best val_bpd"],
                [[name.upper(), sum(x["steps"] for x in r["trials"]),
                  f"{sum(x['train_s'] for x in r['trials']):.1f}", f"{r['wall']:.0f}",
                  f"{sum(x['status'] == 'early_stopped' for x in r['trials'])}/{len(r['trials'])}",
                  f"{r['best']:.4f}"] for name, r in runs.items()])
    fifo, asha = runs["fifo"], runs["asha"]
    saved = 1 - sum(x["steps"] for x in asha["trials"]) / sum(x["steps"] for x in fifo["trials"])
    print(f"\nASHA spent {saved:.0%} fewer steps; best val_bpd {asha['best']:.4f} vs FIFO "
          f"{fifo['best']:.4f} ({asha['best'] - fifo['best']:+.4f}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

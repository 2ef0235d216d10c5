"""Training throughput: `genbench train` (Ray Train, 1 worker) against a plain PyTorch loop.

Both run the same family code (build, make_optimizers, loss) with the same batch size and
thread count, side by side in one invocation. Steady-state images/s skip the first log interval
(warm-up); genbench's figure comes from its own MLflow metrics, so Ray start-up is excluded and
reported separately as wall time. Peak memory is each training process's max RSS (GPU: max
allocated).

    .venv/bin/python benchmarks/train_throughput.py [--steps 120] [--families ae,vae,gan,pixelcnn] [--gpu]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = {"ae": 128, "vae": 128, "gan": 128, "pixelcnn": 64}


def plain_loop(family_name: str, steps: int, warmup: int, gpu: bool) -> dict:
    """The reference: a bare PyTorch loop over the same in-memory data and model code."""
    import torch

    from pipeline.config import Config
    from pipeline.data import ShardedBatches, load_split
    from pipeline.models import FAMILIES

    device = torch.device("cuda" if gpu else "cpu")
    cfg = Config.from_dict({"model": family_name, "train": {"batch_size": BATCH[family_name]}})
    family = FAMILIES[family_name]
    data = load_split("fashion-mnist", "train")
    batches = ShardedBatches(data, BATCH[family_name], 0, 1, 0)
    torch.manual_seed(0)
    nets = {k: v.to(device) for k, v in family.build(cfg.family, data.image_shape, 0).items()}
    opts = family.make_optimizers(cfg.family, nets)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if gpu else \
        __import__("contextlib").nullcontext
    t0 = None
    for step in range(steps):
        if step == warmup:
            if gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, _ = batches.batch(step)
        x = x.to(device)
        for phase in family.PHASES:
            opts[phase].zero_grad(set_to_none=True)
            with autocast():
                out = family.loss(cfg.family, nets, x, None, phase)
            out["loss"].backward()
            opts[phase].step()
        if step % 20 == 0:
            float(out["loss"])  # keep the GPU from running ahead unboundedly (as logging does)
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"images_per_s": (steps - warmup) * BATCH[family_name] / seconds, "peak_mb": peak,
            "threads": torch.get_num_threads()}


def genbench_run(family_name: str, steps: int, log_every: int, gpu: bool, workdir: Path) -> dict:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir}/m.db"
    cmd = [str(ROOT / ".venv/bin/genbench"), "train", "--model", family_name, "--steps",
           str(steps), "--experiment", "throughput", "--set",
           f"train.batch_size={BATCH[family_name]}", "--set", f"train.log_every={log_every}",
           "--set", "train.eval_every=1000000", "--set", "train.checkpoint_every=1000000"]
    if gpu:
        cmd.append("--gpu")
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("throughput")
    run = c.search_runs([exp.experiment_id], order_by=["start_time DESC"], max_results=1)[0]
    history = sorted(c.get_metric_history(run.info.run_id, "images_per_s"), key=lambda m: m.step)
    steady = [m.value for m in history[1:]] or [history[-1].value]  # skip warm-up interval
    # time-weighted: images / seconds over the steady intervals
    ips = len(steady) / sum(1 / v for v in steady)
    peak = max(m.value for m in c.get_metric_history(run.info.run_id, "peak_memory_mb"))
    return {"images_per_s": ips, "peak_mb": peak, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--families", default="ae,vae,gan,pixelcnn")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--plain", help=argparse.SUPPRESS)  # internal: run the plain loop only
    args = ap.parse_args()
    log_every = max(10, args.steps // 6)
    if args.plain:
        print(json.dumps(plain_loop(args.plain, args.steps, log_every, args.gpu)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families.split(","):
            plain_cmd = [sys.executable, __file__, "--plain", name, "--steps", str(args.steps)]
            if args.gpu:
                plain_cmd.append("--gpu")
            plain = json.loads(subprocess.run(plain_cmd, check=True, capture_output=True,
                                              text=True, cwd=ROOT).stdout.strip().splitlines()[-1])
            ours = genbench_run(name, args.steps, log_every, args.gpu, Path(tmp))
            rows.append((name, BATCH[name], plain, ours))
            print(f"  measured {name}", file=sys.stderr, flush=True)
    device = "GPU" if args.gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"\ntraining throughput, {device}, {args.steps} steps, steady state after "
          f"{log_every} warm-up steps")
    print(f"| family | batch | plain img/s | genbench img/s | ratio | plain peak MB | "
          f"genbench peak MB | genbench wall s (incl. Ray start) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, batch, plain, ours in rows:
        print(f"| {name} | {batch} | {plain['images_per_s']:.0f} | {ours['images_per_s']:.0f} | "
              f"{ours['images_per_s'] / plain['images_per_s']:.3f} | {plain['peak_mb']:.0f} | "
              f"{ours['peak_mb']:.0f} | {ours['wall_s']:.0f} |")


if __name__ == "__main__":
    main()

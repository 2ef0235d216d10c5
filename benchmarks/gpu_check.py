"""GPU check, without Ray or MLflow (for machines that have torch only): the training loop on
CUDA with bf16 autocast, DDP over an nccl process group, and throughput against a plain loop.

    python -m benchmarks.gpu_check [--data-root DIR] [--steps 300]
    python -m benchmarks.gpu_check --smoke   # does it run? (tiny nets, 10 steps)

Each family trains at its batch in BATCH; a family not listed there (one registered outside
pipeline/models/) at DEFAULT_BATCH.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from benchmarks.common import add_smoke, plain_loop, print_table, tiny
from pipeline.config import Config
from pipeline.data import load_split
from pipeline.loop import Context, build_nets, fit
from pipeline.models import FAMILIES

# the autoregressive families hold activations per pixel (the Transformer attention over 784
# tokens too): half the batch of the others
BATCH = {"ae": 256, "vae": 256, "gan": 256, "pixelcnn": 128, "transformer": 128}
DEFAULT_BATCH = 128
SMOKE_BATCH = 16


def batch_size(name: str, smoke: bool = False) -> int:
    return SMOKE_BATCH if smoke else BATCH.get(name, DEFAULT_BATCH)


class Marks:
    """Stands in for the MLflow logger: the time of each log point (the loop has synced the
    device there, reading its metrics)."""

    def __init__(self):
        self.marks = []

    def metrics(self, values, step, timestamp=None):
        if "images_per_s" in values:
            self.marks.append((step, time.perf_counter()))

    def figure_png(self, *args):
        pass

    def artifact(self, *args):
        pass

    def flush(self):
        pass


def timed_fit(cfg, steps, warmup, device="cuda"):
    """Our loop (pipeline.loop.fit), images/s measured between its log points."""
    logger = Marks()
    fit(cfg, Context(device=torch.device(device)), lambda metrics, directory: None, logger=logger)
    marks = logger.marks
    (s0, t0), (s1, t1) = next(m for m in marks if m[0] >= warmup), marks[-1]
    return (s1 - s0) * cfg.train.batch_size / (t1 - t0), marks


def ddp_nccl_smoke(name, data, size: dict):
    """DDP-wrapped nets over the nccl group (world 1 on one GPU): forward/backward/step in bf16."""
    cfg = Config.from_dict({"model": name, name: size, "train": {"batch_size": 64, "gpu": True}})
    family = FAMILIES[name]
    nets, opts = build_nets(cfg, data, torch.device("cuda"), world=2)  # world>1 -> DDP wrap
    x = data.images[:64].cuda()
    for phase in family.PHASES:
        opts[phase].zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = family.loss(cfg.family, nets, x, None, phase)
        out["loss"].backward()
        opts[phase].step()
    return {k: round(float(v), 4) for k, v in out.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", help="Fashion-MNIST's folder (default: where genbench looks)")
    ap.add_argument("--steps", type=int, default=300)
    add_smoke(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps = 10
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA device (this check is for GPUs)")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    dist.init_process_group("nccl", rank=0, world_size=1)
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, "nccl",
          torch.cuda.nccl.version())
    data = load_split("fashion-mnist", "train", args.data_root)
    size = {name: tiny(name) if args.smoke else {} for name in FAMILIES}
    for name in FAMILIES:
        print("ddp+nccl+bf16", name, ddp_nccl_smoke(name, data, size[name]), flush=True)
    warmup = max(1, args.steps // 5)
    print()
    print_table(["family", "batch", "plain fp32 img/s", "plain bf16 img/s",
                 "genbench loop bf16 img/s", "ratio (loop/plain bf16)", "peak GPU MB"], [])
    for name in FAMILIES:
        batch = batch_size(name, args.smoke)
        raw = {"model": name, name: size[name], "data": {"root": args.data_root},
               "train": {"steps": args.steps, "batch_size": batch, "gpu": True,
                         "log_every": warmup, "eval_every": 10**9,
                         "checkpoint_every": 10**9}}
        cfg = Config.from_dict(raw)
        fp32 = plain_loop(Config.from_dict({**raw, "train": {**raw["train"], "bf16": False}}),
                          warmup, gpu=True, data=data)["images_per_s"]
        bf16 = plain_loop(cfg, warmup, gpu=True, data=data)["images_per_s"]
        torch.cuda.reset_peak_memory_stats()
        ours, _ = timed_fit(cfg, args.steps, warmup)
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"| {name} | {batch} | {fp32:.0f} | {bf16:.0f} | {ours:.0f} | "
              f"{ours / bf16:.3f} | {peak:.0f} |", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

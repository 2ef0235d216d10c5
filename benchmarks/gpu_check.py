"""GPU check, without Ray or MLflow (for machines that have torch only): the training loop on
CUDA with bf16 autocast, DDP over an nccl process group, and throughput against a plain loop.

    python benchmarks/gpu_check.py --data-root DIR [--steps 300]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from pipeline.config import Config
from pipeline.data import ShardedBatches, load_split
from pipeline.loop import Context, build_nets, fit
from pipeline.models import FAMILIES

BATCH = {"ae": 256, "vae": 256, "gan": 256, "pixelcnn": 128}


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


def timed_fit(cfg, steps, warmup):
    """Our loop (pipeline.loop.fit), images/s measured between its log points."""
    logger = Marks()
    fit(cfg, Context(device=torch.device("cuda")), lambda metrics, directory: None, logger=logger)
    marks = logger.marks
    (s0, t0), (s1, t1) = next(m for m in marks if m[0] >= warmup), marks[-1]
    return (s1 - s0) * cfg.train.batch_size / (t1 - t0), marks


def plain(cfg, data, steps, warmup, bf16):
    family = FAMILIES[cfg.model]
    device = torch.device("cuda")
    nets, opts = build_nets(cfg, data, device, 1)
    batches = ShardedBatches(data, cfg.train.batch_size, 0, 1, 0)
    for step in range(steps):
        if step == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        x = batches.batch(step)[0].to(device)
        for phase in family.PHASES:
            opts[phase].zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                out = family.loss(cfg.family, nets, x, None, phase)
            out["loss"].backward()
            opts[phase].step()
    torch.cuda.synchronize()
    return (steps - warmup) * cfg.train.batch_size / (time.perf_counter() - t0)


def ddp_nccl_smoke(name, data):
    """DDP-wrapped nets over the nccl group (world 1 on one GPU): forward/backward/step in bf16."""
    cfg = Config.from_dict({"model": name, "train": {"batch_size": 64, "gpu": True}})
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    dist.init_process_group("nccl", rank=0, world_size=1)
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, "nccl",
          torch.cuda.nccl.version())
    data = load_split("fashion-mnist", "train", args.data_root)
    for name in FAMILIES:
        print("ddp+nccl+bf16", name, ddp_nccl_smoke(name, data), flush=True)
    warmup = args.steps // 5
    print(f"\n| family | batch | plain fp32 img/s | plain bf16 img/s | genbench loop bf16 img/s "
          f"| ratio (loop/plain bf16) | peak GPU MB |")
    print("|---|---|---|---|---|---|---|")
    for name in FAMILIES:
        raw = {"model": name, "data": {"root": args.data_root},
               "train": {"steps": args.steps, "batch_size": BATCH[name], "gpu": True,
                         "log_every": warmup, "eval_every": 10**9,
                         "checkpoint_every": 10**9}}
        cfg = Config.from_dict(raw)
        fp32 = plain(Config.from_dict({**raw, "train": {**raw["train"], "bf16": False}}), data,
                     args.steps, warmup, bf16=False)
        bf16 = plain(cfg, data, args.steps, warmup, bf16=True)
        torch.cuda.reset_peak_memory_stats()
        ours, _ = timed_fit(cfg, args.steps, warmup)
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"| {name} | {BATCH[name]} | {fp32:.0f} | {bf16:.0f} | {ours:.0f} | "
              f"{ours / bf16:.3f} | {peak:.0f} |", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""What the benchmarks share: tiny sizes and per-family overrides, the plain PyTorch loop they
measure genbench against, timing, the device's name, Markdown tables, a private MLflow store
and Ray. Imports of Ray, MLflow and the project stay inside functions: gpu_check and
sampling_speed run where only torch is installed."""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

SMOKE_HELP = ("tiny models (each family's TINY), a few steps, one repeat: checks that the "
              "benchmark runs end to end; its numbers mean nothing")


def add_smoke(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


# -- sizes and overrides ------------------------------------------------------------------------

def tiny(name: str) -> dict:
    """The family's own tiny size (TINY in its module), or {} (its defaults)."""
    from pipeline.models import FAMILIES

    return dict(getattr(FAMILIES[name], "TINY", {}))


def tiny_sets(name: str) -> list[str]:
    """The tiny size as KEY=VALUE overrides: ["vae.width=8", ...]."""
    return [f"{name}.{k}={v}" for k, v in tiny(name).items()]


def family_sets(name: str, sets: Sequence[str]) -> list[str]:
    """The KEY=VALUE overrides that concern this family: its own section's, and those of the
    sections that are no family's (train., data.); another family's keys are dropped."""
    from pipeline.models import FAMILIES

    return [kv for kv in sets if kv.split(".", 1)[0] == name
            or kv.split(".", 1)[0] not in FAMILIES]


def config(name: str, sets: Sequence[str], steps: int | None = None):
    """The training config of family `name` with these overrides (and `steps`)."""
    from pipeline.config import Config, parse_overrides

    raw = parse_overrides(list(sets))
    raw["model"] = name
    if steps is not None:
        raw.setdefault("train", {})["steps"] = steps
    return Config.from_dict(raw)


# -- the reference loop ---------------------------------------------------------------------------

def plain_loop(cfg, warmup: int, gpu: bool, threads: int | None = None, data=None) -> dict:
    """The reference: a bare PyTorch loop over the same in-memory data and family code (build,
    make_optimizers, loss) as genbench's loop, without metrics, logging or checkpoints; bf16
    autocast on a GPU where cfg.train.bf16. images/s from step `warmup` to the last."""
    import contextlib

    import torch

    from pipeline.data import ShardedBatches, load_split
    from pipeline.models import FAMILIES

    if threads:
        torch.set_num_threads(threads)
    steps = cfg.train.steps
    family, device = FAMILIES[cfg.model], torch.device("cuda" if gpu else "cpu")
    d = cfg.data
    if data is None:
        data = load_split(d.dataset, "train", d.root, d.val_fraction, d.split_seed, d.image_size)
    batches = ShardedBatches(data, cfg.train.batch_size, 0, 1, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    nets = {k: v.to(device) for k, v in family.build(cfg.family, data.image_shape, 0).items()}
    opts = family.make_optimizers(cfg.family, nets)
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16))
                if gpu and cfg.train.bf16 else contextlib.nullcontext)
    t0 = None
    for step in range(steps):
        if step == warmup:
            sync(device)
            t0 = time.perf_counter()
        x = batches.batch(step)[0].to(device, non_blocking=True)  # as the loop does
        for phase in family.PHASES:
            opts[phase].zero_grad(set_to_none=True)
            with autocast():
                out = family.loss(cfg.family, nets, x, None, phase)
            out["loss"].backward()
            opts[phase].step()
        if (step + 1) % warmup == 0:
            out["loss"].item()  # bound how far a GPU runs ahead, as logging does
    sync(device)
    seconds = time.perf_counter() - t0
    return {"family": cfg.model, "images_per_s": (steps - warmup) * cfg.train.batch_size / seconds,
            "batch": cfg.train.batch_size, "config": cfg.to_dict()[cfg.model]}


# -- timing and the device ----------------------------------------------------------------------

def sync(device=None) -> None:
    """Wait for the GPU (a no-op on CPU): a timing must not stop before the work does."""
    import torch

    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], images: int, warmup: Callable[[], object] | None = None,
          device=None) -> tuple[float, float]:
    """(seconds, images/s) of fn(), after one warm-up call of `warmup` (or fn)."""
    (warmup or fn)()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - t0
    return seconds, images / seconds


def rate_text(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.1f}" if rate >= 1 else f"{rate:.3g}"


def where(device) -> str:
    """The device in words: the GPU's name, or the CPU's threads and cores."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {torch.get_num_threads()} torch threads ({os.cpu_count()} cores)"


# -- output --------------------------------------------------------------------------------------

def print_table(header: Sequence[str], rows: Sequence[Sequence[object]],
                right: bool = False, file=None) -> None:
    """A Markdown table; right=True aligns every column but the first to the right."""
    print("| " + " | ".join(header) + " |", file=file)
    rule = ["---"] + ["---:" if right else "---"] * (len(header) - 1)
    print("|" + "|".join(rule) + "|", file=file)
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |", file=file, flush=True)


# -- MLflow and Ray ------------------------------------------------------------------------------

def private_mlflow(directory) -> str:
    """Point this process (and the Ray workers it starts) at a fresh sqlite store."""
    uri = f"sqlite:///{os.path.abspath(directory)}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def start_ray(address: str | None = None, cpus: int | None = None) -> bool:
    """Join --address (or RAY_ADDRESS), or start a quiet local Ray (with `cpus` CPUs), as
    genbench does; an already connected Ray is used as it is. True when this call started
    or joined one (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    if cpus and not (address or os.environ.get("RAY_ADDRESS")):
        import logging

        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        return True
    from pipeline.cluster import init_ray

    init_ray(address)
    return True


def wall_clock(client, run) -> dict:
    """A finished run's wall-clock images/s from the first to the last logged step (MLflow
    metric timestamps), and the time-weighted mean of what it logged over the same steps."""
    points = sorted(client.get_metric_history(run.info.run_id, "images_per_s"),
                    key=lambda m: m.step)
    batch = int(run.data.params["train.batch_size"])
    first, last = points[0], points[-1]
    seconds = (last.timestamp - first.timestamp) / 1000
    images = (last.step - first.step) * batch
    # The logged figure over the same steps, weighted by time (images / sum of interval times).
    logged_seconds = sum((b.step - a.step) * batch / b.value for a, b in zip(points, points[1:]))
    return {"images_per_s": images / seconds, "logged_images_per_s": images / logged_seconds,
            "first_step": first.step, "last_step": last.step, "batch": batch,
            "first_timestamp": first.timestamp / 1000}

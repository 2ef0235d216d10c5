"""The training loop, free of Ray: one process = one rank. train.py runs it under Ray Train (and
tune runs it directly in single-worker trials), passing in a `report` function and a checkpoint.

Per step, for each phase of the family (GAN: D then G): zero grads, loss under bf16 autocast on
GPU, backward (DDP all-reduces gradients), optimizer step. Every log interval the metric values
are summed and all-reduced across ranks, and rank 0 queues them for MLflow (written by a
background thread); every eval interval all ranks compute validation metrics on their shard of
the validation split and rank 0 logs a sample grid. Ray hears from the loop only at checkpoints.
Rank 0 keeps the weight averages (EMA, pipeline/ema.py) of the nets that have one, updated after
each step; its sample grids and checkpoints carry them.
"""
from __future__ import annotations

import math
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipeline import checkpoint as ckpt
from pipeline.config import Config
from pipeline.data import ImageData, ShardedBatches, load_config_split
from pipeline.ema import WeightAverage
from pipeline.faults import Fault
from pipeline.grids import grid_png, recon_pairs
from pipeline.models import FAMILIES, can

VAL_IMAGES = 2000  # validation metrics use at most this many images (cheap, fixed per run)
VAL_CHUNK = 500    # images per validation forward pass


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    run_id: str | None = None
    tracking_uri: str | None = None


def total_steps(cfg: Config, steps_per_epoch: int) -> int:
    if cfg.train.steps is not None:
        return cfg.train.steps
    return max(1, math.ceil((cfg.train.epochs or 1.0) * steps_per_epoch))


def build_nets(cfg: Config, data: ImageData, device, world: int):
    family = FAMILIES[cfg.model]
    num_classes = data.num_classes if cfg.train.conditional else 0
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    nets = {k: v.to(device) for k, v in family.build(cfg.family, data.image_shape,
                                                     num_classes).items()}
    if world > 1:
        ids = [device] if device.type == "cuda" else None
        nets = {k: DistributedDataParallel(v, device_ids=ids, **family.DDP_OPTIONS.get(k, {}))
                for k, v in nets.items()}
    return nets, family.make_optimizers(cfg.family, nets)


def fit(cfg: Config, ctx: Context, report: Callable[[dict, str | None], None],
        start: dict | None = None, logger=None, data: ImageData | None = None,
        val: ImageData | None = None, progress: Callable[[dict], None] | None = None,
        fault: Fault | None = None, min_checkpoint_interval_s: float = 0.0) -> dict:
    """Train until the configured step count; returns the metrics of the last step.

    Between two log points nothing leaves the device: each step's metric scalars stay where
    they are, and nothing waits for Ray or MLflow. At a log point they are summed, all-reduced
    and read once (the only host sync), then queued:
      logger (rank 0, or None): metrics(values, step, timestamp), figure_png, artifact, flush,
          e.g. pipeline.tracking.RunLogger, which writes on its own thread;
      progress(metrics) (rank 0, optional): the driver's progress line.
    report(metrics, checkpoint_dir_or_None) is called by every rank at the checkpoint steps
    only (the same steps on every rank); rank 0's directory holds the checkpoint and lasts until
    report returns. report must not let the checkpoint be registered before the logger has
    stored every point up to its step (logger.flush() on any thread), which is what makes a
    restart from it exactly-once (pipeline/train.py flushes on Ray's upload thread).
    fault: an injected fault for this rank (tests; see pipeline.faults), fired after its step.
    min_checkpoint_interval_s: a checkpoint step that comes sooner than this after the last
    checkpoint is skipped (the first and the last step's never are); rank 0's clock decides for
    every rank. genbench train passes train.checkpoint_min_interval_s: Ray Train takes one
    report per poll, and faster ones queue up and hold the end of the run.
    """
    family = FAMILIES[cfg.model]
    d, t = cfg.data, cfg.train
    data = data or load_config_split(d, "train")
    if val is None and d.val_fraction > 0:
        val = load_config_split(d, "val")
    batches = ShardedBatches(data, t.batch_size, ctx.rank, ctx.world, t.seed)
    steps = total_steps(cfg, batches.steps_per_epoch)
    nets, opts = build_nets(cfg, data, ctx.device, ctx.world)
    step = ckpt.restore(start, nets, opts) if start else 0
    # Every rank holds the same weights: rank 0's averages are the run's (it checkpoints them)
    averages = WeightAverage.for_run(cfg, nets) if ctx.rank == 0 else None
    if averages is not None and start:
        averages.load_state_dict(start.get("ema"))
    torch.manual_seed(t.seed * 7919 + ctx.rank + 104729 * step)  # noise differs across ranks
    use_bf16 = t.bf16 and ctx.device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
    values: dict[str, list[torch.Tensor]] = {}  # each metric's per-step scalars since the last log
    count, last = 0, {}
    last_checkpoint = -math.inf  # rank 0's clock at the last checkpoint
    # The previous log point's time. images_per_s is wall-clock: this clock never restarts around
    # logging, validation or checkpoints, so their cost lands in the interval that follows.
    tic = time.perf_counter()
    while step < steps:
        x, y = batches.batch(step)
        x = x.to(ctx.device, non_blocking=True)
        y = y.to(ctx.device, non_blocking=True) if t.conditional else None
        for phase in family.PHASES:
            opts[phase].zero_grad(set_to_none=True)
            with autocast():
                out = family.loss(cfg.family, nets, x, y, phase)
            out["loss"].backward()
            opts[phase].step()
            for k, v in out.items():
                if k != "loss":  # kept on the device as they are: no kernel, no sync
                    values.setdefault(k, []).append(v.detach())
        if averages is not None:
            averages.update()
        step, count = step + 1, count + 1
        if fault is not None and step == fault.step:
            fault.fire()
        is_last = step == steps
        ckpt_step = step % t.checkpoint_every == 0 or is_last
        do_log = step % t.log_every == 0 or ckpt_step
        do_eval = step % t.eval_every == 0 or is_last
        if not (do_log or do_eval):
            continue
        do_ckpt = ckpt_step and (is_last or min_checkpoint_interval_s <= 0 or rank0_says(
            time.perf_counter() - last_checkpoint >= min_checkpoint_interval_s, ctx))
        metrics: dict[str, float] = {}
        if do_log:
            metrics = _reduce(values, count, ctx)  # all-reduce, then the one read to the host
            now, wall = time.perf_counter(), time.time()
            metrics["images_per_s"] = count * t.batch_size / (now - tic)
            tic = now
            for phase, opt in opts.items():
                metrics["lr" if len(opts) == 1 else f"lr_{phase}"] = opt.param_groups[0]["lr"]
            metrics["peak_memory_mb"] = peak_memory_mb(ctx.device)
            metrics["epoch"] = step / batches.steps_per_epoch
            if logger is not None:
                logger.metrics(metrics, step, wall)
            values, count = {}, 0
        if do_eval:
            scores = validation_metrics(cfg, nets, val, ctx, autocast)
            if logger is not None:
                if scores:
                    logger.metrics(scores, step)
                log_samples(cfg, nets if averages is None else {**nets, **averages.nets},
                            data, ctx, logger, step)
            metrics.update(scores)
        metrics["step"] = step
        last = metrics
        if progress is not None:
            progress(metrics)
        if do_ckpt:
            last_checkpoint = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                if ctx.rank == 0:
                    ckpt.save(tmp, nets, opts, step, cfg.to_dict(), ctx.run_id,
                              ema=averages.state_dict() if averages is not None else None)
                    if is_last and logger is not None:  # read now: queued before the report
                        logger.artifact(f"{tmp}/{ckpt.FILENAME}", "checkpoint")
                report(metrics, tmp if ctx.rank == 0 else None)
    return last


def rank0_says(flag: bool, ctx: Context) -> bool:
    """Rank 0's flag, on every rank: a decision taken on one clock that all ranks must share
    (a checkpoint is a collective in Ray Train)."""
    if ctx.world == 1:
        return flag
    value = torch.tensor([float(flag)], device=ctx.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or this process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reduce(values: dict[str, list[torch.Tensor]], count: int, ctx: Context) -> dict[str, float]:
    """Mean of each metric over the interval's steps and over ranks (equal batches per rank)."""
    if not values:
        return {}
    keys = sorted(values)
    vec = torch.stack([torch.stack(values[k]).float().sum() for k in keys]).to(ctx.device) / count
    if ctx.world > 1:
        dist.all_reduce(vec)
        vec /= ctx.world
    return dict(zip(keys, vec.tolist()))


def mean_per_image(sums: dict[str, torch.Tensor], images: int, ctx: Context) -> dict[str, float]:
    """sums[k] is the sum over this rank's images of a per-image value: the mean over every
    rank's images, however unevenly they are split (sum of sums / sum of counts)."""
    keys = sorted(sums)
    vec = torch.stack([sums[k].to(ctx.device, torch.float64) for k in keys]
                      + [torch.tensor(float(images), dtype=torch.float64, device=ctx.device)])
    if ctx.world > 1:
        dist.all_reduce(vec)
    return dict(zip(keys, (vec[:-1] / vec[-1]).tolist()))


@torch.no_grad()
def validation_metrics(cfg: Config, nets, val: ImageData | None, ctx: Context, autocast,
                       chunk: int = VAL_CHUNK) -> dict[str, float]:
    """Validation losses (val_*) over the first VAL_IMAGES of the validation split, each rank
    taking every world-th image, in chunks: a mean per image across chunks and ranks (a loss
    term is a mean over its batch's images, so batch mean x batch size sums them).
    A family without a validation loss (SWEEP_METRIC None, e.g. a GAN) gets none: tune
    computes a small-sample FID for it instead."""
    family = FAMILIES[cfg.model]
    if val is None or family.SWEEP_METRIC is None:
        return {}
    n = min(len(val), VAL_IMAGES)
    if n == 0:
        return {}
    idx = torch.arange(ctx.rank, n, ctx.world)
    # A rank without images (fewer than `world`) still joins the all-reduce, with weight 0.
    weight = 1.0 if len(idx) else 0.0
    if not len(idx):
        idx = torch.arange(1)
    for net in nets.values():
        net.eval()
    sums: dict[str, torch.Tensor] = {}
    for part in idx.split(chunk):
        x = val.images[part].to(ctx.device)
        y = val.labels[part].to(ctx.device) if cfg.train.conditional else None
        with autocast():
            out = family.loss(cfg.family, nets, x, y, family.PHASES[0])
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v.detach().double() * len(part) * weight
    for net in nets.values():
        net.train()
    images = len(idx) if weight else 0
    return {f"val_{k}": v for k, v in mean_per_image(sums, images, ctx).items()}


@torch.no_grad()
def log_samples(cfg: Config, nets, data: ImageData, ctx: Context, logger, step: int) -> None:
    """Rank 0: a sample grid (and reconstructions for AE/VAE) as MLflow image artifacts.
    nets: the ones to sample from (fit() passes the weight averages where there are some)."""
    family = FAMILIES[cfg.model]
    n = family.GRID_SIZE
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data), generator=gen)[:n]
    labels = data.labels[idx].to(ctx.device) if cfg.train.conditional else None
    for net in nets.values():
        net.eval()
    if can(family, "sample"):
        images = family.sample(cfg.family, nets, n, labels, device=ctx.device)
        logger.figure_png(grid_png(images), f"samples/step_{step:07d}.png")
    if can(family, "reconstruct"):
        real = data.images[idx[:32]].to(ctx.device)
        recon = family.reconstruct(cfg.family, nets, real,
                                   labels[:32] if labels is not None else None)
        logger.figure_png(grid_png(recon_pairs(real, recon)),
                          f"reconstructions/step_{step:07d}.png")
    for net in nets.values():
        net.train()

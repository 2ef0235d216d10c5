"""`genbench bench`'s plan: the stages it will start, the runs each one starts, and how long each
should take on this machine, printed before anything starts (and alone with --dry-run).

Training time is measured, not guessed: each distinct model config trains a few steps here, in
this process, without Ray (MEASURE_S each, on this machine's CPU, or its GPU with --gpu), and the
seconds per image scale by the run's steps x batch. Evaluation is an order-of-magnitude estimate:
network passes (sampling n_fake images, bits/dim, the probe, the OOD sets) priced at a third of
a training step per image, plus the fixed costs below, which come from the stage times measured
on 2 CPU cores and one H200 (the comments of genbench/presets/quick.yaml and gpu.yaml).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

from pipeline.errors import ConfigError

CONFIRM_ABOVE_S = 3 * 3600   # a longer plan needs --yes: days of CPU should never start silently
MEASURE_S = 0.25             # timed training per model config (a few seconds for quick)
CPU_MAX_BATCH = 32           # per-image cost on CPU is flat above this; big nets stay affordable
# Fixed costs (2 CPU cores; quick.yaml's stage times): Ray Train starting its actors, an
# evaluation's data, extractor and tables, the report.
RAY_START_S = 20.0
EVAL_FIXED_S = 10.0
REPORT_S = 5.0
DOMAIN_EPOCH_S = {"cpu": 15.0, "cuda": 2.0}      # the domain classifier (its own stage)
EXTRACTOR_IMAGE_S = {"domain": {"cpu": 3e-4, "cuda": 1e-5},      # features of one image
                     "inception": {"cpu": 3e-2, "cuda": 3e-4}}
BACKGROUND_STEP_S = {"cpu": 0.05, "cuda": 0.005}  # the OOD likelihood-ratio background model
TEST_IMAGES = 10_000         # a built-in dataset's test split: eval's default n and bits/dim set
# A cached sampler that goes position by position (GRID_SIZE below FULL_GRID, and no
# sample_steps) costs about 1/64 of a full pass per position: quick.yaml's PixelCNN and
# transformer evaluations, timed.
FULL_GRID = 64
CACHED_POSITION = 1 / 64


@dataclass(frozen=True)
class Stage:
    name: str        # as genbench/stage_pool.py names it
    starts: str      # the runs it starts
    seconds: float


@dataclass(frozen=True)
class Plan:
    stages: list[Stage]
    device: str      # where the training steps were timed

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def describe(self, title: str) -> str:
        width = max(len(s.name) for s in self.stages)
        starts = max(len(s.starts) for s in self.stages)
        lines = [f"plan: {title} (training steps timed on this machine's {self.device})"]
        lines += [f"  {s.name:<{width}}  {s.starts:<{starts}}  {duration(s.seconds):>8}"
                  for s in self.stages]
        lines.append(f"  total, one stage after another: ~{duration(self.seconds)} (stages that "
                     f"fit run at once, so the wall time can be shorter)")
        return "\n".join(lines)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def confirm(plan: Plan, yes: bool) -> None:
    """One line (ConfigError: exit 2) when the plan is longer than CONFIRM_ABOVE_S and --yes was
    not given."""
    if plan.seconds > CONFIRM_ABOVE_S and not yes:
        raise ConfigError(f"this bench would take ~{duration(plan.seconds)} here (over "
                          f"{duration(CONFIRM_ABOVE_S)}, {len(plan.stages)} stages); add --yes "
                          f"to run it anyway, or --dry-run to see the plan")


def make_plan(preset, jobs, configs: dict, eval_options, sweep_cfg=None, scaling_cfgs=(),
              gpu: bool = False) -> Plan:
    """The stages bench.run adds, in its order, each with its estimate. jobs: (name, family,
    config additions) as in bench.run; configs: name -> Config; eval_options(family, more):
    the EvalOptions of a job's evaluation (bench.eval_options)."""
    from genbench import scaling

    device = _device(gpu)
    stages = [Stage(f"train {name}", _train_starts(configs[name]),
                    train_seconds(configs[name], device)) for name, _, _ in jobs]
    if jobs and preset.needs_domain_classifier():
        stages.append(domain_stage(configs[jobs[0][0]].data, preset.eval.get("domain_epochs"),
                                   device))
    for name, family, more in jobs:
        opts = eval_options(family, more)
        stages.append(Stage(f"eval {name}", "logs into its train run",
                            eval_seconds(configs[name], opts, device)))
    if sweep_cfg is not None:
        n, steps = preset.sweep["samples"], sweep_cfg.train.steps
        stages.append(Stage(f"sweep {sweep_cfg.model} ({n} trials)",
                            f"1 MLflow parent run + {n} trial runs (Ray Tune)",
                            RAY_START_S + n * steps * _step_seconds(sweep_cfg, device)))
    stages += [Stage(f"scaling {scaling.describe(cfg)}", _train_starts(cfg),
                     train_seconds(cfg, device)) for cfg in scaling_cfgs]
    stages.append(Stage("report", "1 MLflow report run", REPORT_S))
    return Plan(stages, "GPU" if device == "cuda" else f"CPU, 1 thread, x{_cores()} cores")


def domain_stage(d, epochs: float | None, device: str) -> Stage:
    """The domain classifier's stage: trained once per machine, nothing to do once cached."""
    from eval.domain_classifier import DOMAIN_EPOCHS, cached_domain, domain_variant

    if cached_domain(d.dataset, d.image_size, domain_variant(epochs)) is not None:
        return Stage("domain classifier", "cached on this machine: loaded", 0.0)
    return Stage("domain classifier", "trained once on this machine, then cached",
                 DOMAIN_EPOCH_S[device] * (epochs or DOMAIN_EPOCHS))


def _device(gpu: bool) -> str:
    import torch
    # --gpu on a machine without one (a cluster's GPUs): timed on the CPU, an overestimate
    return "cuda" if gpu and torch.cuda.is_available() else "cpu"


def _cores() -> int:
    import os
    return os.cpu_count() or 1


def _train_starts(cfg) -> str:
    w = cfg.train.workers
    return (f"1 MLflow run (Ray Train, {w} {'GPU' if cfg.train.gpu else 'CPU'} "
            f"worker{'s' if w > 1 else ''})")


def train_seconds(cfg, device: str) -> float:
    return RAY_START_S + train_steps(cfg) * _step_seconds(cfg, device)


def train_steps(cfg) -> int:
    from pipeline.loop import total_steps
    return total_steps(cfg, max(1, _train_size(cfg.data) // cfg.train.batch_size))


def _step_seconds(cfg, device: str) -> float:
    """One optimizer step of the run's global batch: its GPU workers share it; on CPU the
    machine's cores do (a stage alone, as the serial total assumes)."""
    share = cfg.train.workers if device == "cuda" else _cores()
    return cfg.train.batch_size * image_seconds(cfg, device) / share


def eval_seconds(cfg, opts, device: str) -> float:
    """Network passes of an evaluation (EvalOptions opts) at a third of a training step's cost
    per image (a forward pass of ~3: forward, backward), extractor features, fixed costs."""
    from pipeline.models import FAMILIES, can

    family = FAMILIES[cfg.model]
    forward = image_seconds(cfg, device) / 3
    metrics = set(opts.metrics)
    nll = (getattr(cfg.family, "nll_timesteps", None)
           or (opts.k if family.LIKELIHOOD == "bound" else 1))
    seconds = EVAL_FIXED_S
    if can(family, "sample") and metrics & {"fid", "is", "kid", "prc", "dc"}:
        n_fake, n_real = opts.n_fake or TEST_IMAGES, opts.n_real or TEST_IMAGES
        seconds += n_fake * forward * sample_passes(cfg)
        seconds += (n_fake + n_real) * sum(EXTRACTOR_IMAGE_S[e][device] for e in opts.extractors)
    if can(family, "nll") and "bpd" in metrics:
        seconds += (opts.bpd_images or TEST_IMAGES) * forward * nll
    if can(family, "encode") and "probe" in metrics:
        seconds += (opts.probe_images or _train_size(cfg.data)) * forward
    if "ood" in metrics:
        seconds += (len(opts.ood_sets) + 1) * opts.ood_images * forward * nll
        seconds += opts.ood_background_steps * BACKGROUND_STEP_S[device]
    if "bayes" in metrics:
        seconds += opts.bayes_images * _num_classes(cfg.data) * forward * nll
    return seconds


def sample_passes(cfg) -> float:
    """Network passes per generated image: the family's sampling steps, its positions for a
    cached position-by-position sampler (a fraction of a pass each), or one."""
    from pipeline.models import FAMILIES

    steps = getattr(cfg.family, "sample_steps", None)
    if steps:
        return steps
    if FAMILIES[cfg.model].GRID_SIZE < FULL_GRID:
        return math.prod(_data(_source(cfg.data)).image_shape) * CACHED_POSITION
    return 1


def image_seconds(cfg, device: str) -> float:
    """Seconds per image of a training step of cfg's model here, timed once per model."""
    cap = cfg.train.batch_size if device == "cuda" else min(cfg.train.batch_size, CPU_MAX_BATCH)
    return _timed(cfg.model, cfg.family, _source(cfg.data), cfg.train.conditional, cap, device)


@functools.lru_cache(maxsize=64)
def _timed(model: str, family_cfg, d, conditional: bool, cap: int, device: str) -> float:
    """A training step (the family's every phase) timed in this process for about MEASURE_S:
    the batch doubles from 2 (BatchNorm needs two) up to cap while steps are short; the best
    step at the largest batch wins."""
    import torch

    from pipeline.models import FAMILIES

    family, data = FAMILIES[model], _data(d)
    threads = torch.get_num_threads()
    # one thread: on a busy machine two threads' spin-waits wreck a short timing (10x seen)
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # the run's seeds stay as they were
            return _fastest_step(family, family_cfg, data, conditional, cap, device)
    finally:
        torch.set_num_threads(threads)


def _fastest_step(family, family_cfg, data, conditional: bool, cap: int, device: str) -> float:
    """Seconds per image of the fastest training step at the largest batch tried."""
    import torch

    classes = data.num_classes if conditional else 0
    nets = {k: v.to(device) for k, v in family.build(family_cfg, data.image_shape,
                                                     classes).items()}
    opts = family.make_optimizers(family_cfg, nets)

    # CPU: the thread's own CPU time, so that other people's jobs on a shared machine do not
    # count (the estimate is for free cores); GPU: wall time after a sync
    clock = time.thread_time if device == "cpu" else time.perf_counter

    def step(batch: int) -> float:
        x = data.images[:batch].to(device)
        y = data.labels[:batch].to(device) if classes else None
        tic = clock()
        for phase in family.PHASES:
            opts[phase].zero_grad(set_to_none=True)
            family.loss(family_cfg, nets, x, y, phase)["loss"].backward()
            opts[phase].step()
        if device == "cuda":
            torch.cuda.synchronize()
        return clock() - tic

    batch = min(2, cap)
    step(batch)  # warm-up: first-call allocations
    best, start = math.inf, time.perf_counter()
    while True:
        seconds = step(batch)
        best = min(best, seconds / batch)
        if time.perf_counter() - start > MEASURE_S:
            return best
        if batch < cap and seconds < MEASURE_S / 8:
            batch = min(cap, batch * 2)
            best = math.inf  # small batches overstate the cost per image
            step(batch)


def _train_size(d) -> int:
    """The run's train split size: its dataset's, less the classes it leaves out."""
    import torch

    labels = _data(_source(d)).labels
    left_out = torch.isin(labels, torch.as_tensor(list(d.exclude_classes), dtype=torch.long))
    return int((~left_out).sum())


def _num_classes(d) -> int:
    return _data(_source(d)).num_classes


def _source(d):
    """The data config without its left-out classes: one load and one timing serve both."""
    import dataclasses
    return dataclasses.replace(d, exclude_classes=())


@functools.lru_cache(maxsize=4)
def _data(d):
    """A dataset's train split (data config d), once: its size, image shape and images to time."""
    from pipeline.data import load_config_split
    return load_config_split(d, "train")

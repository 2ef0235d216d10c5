"""The bench's scaling stage: one family trained for the same steps with 1, 2, ... workers, on CPU
(and on GPU with --gpu), each an ordinary `genbench train` run tagged genbench.kind=scaling.

Same global batch and steps for every worker count: DDP splits each batch across the workers, so
every run sees the same images and follows the same optimisation path (tests/test_loop_ddp.py);
what differs is the wall time. The report (report/scaling.py) reads those runs' MLflow
metrics: wall-clock images/s, and the time to reach a target validation metric.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline import schema
from pipeline.config import Config, merge
from pipeline.errors import ConfigError

SECTION_KEYS = {"model", "workers", "config", "target"}


def check_section(section, path: Path | str) -> None:
    """A preset's scaling section: {model, workers: [1, 2], config: {...}, target: number}."""
    from pipeline.models import FAMILIES

    if not isinstance(section, dict) or set(section) - SECTION_KEYS or "model" not in section:
        raise ConfigError(f"preset {path}: scaling takes model (required), "
                          f"{', '.join(sorted(SECTION_KEYS - {'model'}))}")
    model = section["model"]
    if model not in FAMILIES:
        raise ConfigError(f"preset {path}: scaling.model {model!r} is not a registered family; "
                          f"use one of {', '.join(FAMILIES)}")
    if FAMILIES[model].SWEEP_METRIC is None:
        raise ConfigError(f"preset {path}: scaling.model {model} has no validation metric to "
                          f"time; pick a family that declares a SWEEP_METRIC")
    workers = section.get("workers", [1, 2])
    if (not isinstance(workers, list) or not workers
            or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                       for w in workers)):
        raise ConfigError(f"preset {path}: scaling.workers must be a list of positive whole "
                          f"numbers, e.g. [1, 2]")
    target = section.get("target")
    if target is not None and not isinstance(target, (int, float)):
        raise ConfigError(f"preset {path}: scaling.target must be a number (the validation "
                          f"metric to reach) or left out (the best value every run reached)")


def configs(section: dict, dataset: str, flags: dict) -> list[Config]:
    """One config per (device, worker count): CPU always, GPU when the flags ask for it; the
    flags' --workers joins the preset's counts. Bad input fails here, before anything starts."""
    train_flags = dict(flags.get("train", {}))
    counts = sorted(set(section.get("workers", [1, 2])) | {train_flags.pop("workers", 1)})
    gpu = train_flags.pop("gpu", False)
    base = merge({"train": {"checkpoint_every": 10**9}}, section.get("config") or {})
    out = []
    for on_gpu in (False, True) if gpu else (False,):
        for workers in counts:
            raw = merge(base, {"model": section["model"], "data": {"dataset": dataset},
                               "train": {**train_flags, "workers": workers, "gpu": on_gpu}})
            try:
                out.append(Config.from_dict(raw))
            except ConfigError as exc:
                raise ConfigError(f"scaling stage: {exc}") from None
    return out


def fitting(cfgs: list[Config]) -> list[Config]:
    """The configs whose workers the Ray cluster holds now (one worker per GPU, at least one CPU
    per CPU worker); a note names each one left out, e.g. 2 GPU workers on a 1-GPU machine."""
    import ray

    total = ray.cluster_resources()
    kept = []
    for cfg in cfgs:
        unit = "GPU" if cfg.train.gpu else "CPU"
        have = int(total.get(unit, 0))
        if cfg.train.workers > have:
            print(f"genbench: scaling stage: skipping {describe(cfg)}: the cluster has {have} "
                  f"{unit}s", file=sys.stderr, flush=True)
        else:
            kept.append(cfg)
    return kept


def describe(cfg: Config) -> str:
    w = cfg.train.workers
    return f"{cfg.model}, {w} {'GPU' if cfg.train.gpu else 'CPU'} worker{'s' if w > 1 else ''}"


def train_one(cfg: Config, experiment: str, section: dict, address: str | None,
              verbose: bool) -> str:
    from genbench.training import print_summary
    from pipeline.launch import train

    tags = {schema.KIND: schema.SCALING, schema.SCALING_DEVICE: "gpu" if cfg.train.gpu else "cpu"}
    if section.get("target") is not None:
        tags[schema.SCALING_TARGET] = str(float(section["target"]))
    result = train(cfg, experiment=experiment, address=address, verbose=verbose,
                   extra_tags=tags)
    print_summary(result)
    return result.run_id

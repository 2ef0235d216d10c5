"""Which metric a sweep optimises: the family's SWEEP_METRIC, or one the user names, checked
against the metrics a trial really reports. A family without a validation loss (SWEEP_METRIC
None) that can sample is swept on a small-sample FID (tune/sample_fid.py)."""
from __future__ import annotations

import torch

from pipeline.config import Config
from pipeline.data import ImageData
from pipeline.errors import ConfigError
from pipeline.models import FAMILIES, can
from tune.sample_fid import FID_METRIC

HIGHER_IS_BETTER = {"images_per_s", "d_fake"}


def uses_sample_fid(cfg: Config) -> bool:
    """Whether trials of this config report the small-sample FID."""
    family = FAMILIES[cfg.model]
    return family.SWEEP_METRIC is None and can(family, "sample") and cfg.data.val_fraction > 0


def reported_metrics(cfg: Config, data: ImageData) -> set[str]:
    """The metric names a trial of this config reports: the family's loss terms (one forward on
    two images finds them), their val_ twins where the family has a validation loss, and the
    small-sample FID where it has none."""
    family = FAMILIES[cfg.model]
    num_classes = data.num_classes if cfg.train.conditional else 0
    nets = family.build(cfg.family, data.image_shape, num_classes)
    x = data.images[:2]
    y = data.labels[:2] if cfg.train.conditional else None
    names: set[str] = set()
    with torch.no_grad():
        for phase in family.PHASES:
            names |= set(family.loss(cfg.family, nets, x, y, phase)) - {"loss"}
    if family.SWEEP_METRIC is not None and cfg.data.val_fraction > 0:
        names |= {f"val_{k}" for k in names}
    if uses_sample_fid(cfg):
        names.add(FID_METRIC)
    return names | {"images_per_s"}


def choose(cfg: Config, data: ImageData, metric: str | None, mode: str | None) -> tuple[str, str]:
    family = FAMILIES[cfg.model]
    default = family.SWEEP_METRIC or (FID_METRIC if can(family, "sample") else None)
    metric = metric or default
    known = reported_metrics(cfg, data)
    if metric is None:
        raise ConfigError(f"{cfg.model} has no validation metric and no sampler for a FID; "
                          f"pass --metric, one of {', '.join(sorted(known))}")
    if metric not in known:
        hint = (" (validation metrics need data.val_fraction > 0)"
                if metric.startswith("val_") and cfg.data.val_fraction == 0 else "")
        raise ConfigError(f"unknown metric {metric!r} for {cfg.model}{hint}; use one of "
                          f"{', '.join(sorted(known))}")
    if mode is None:
        mode = (family.SWEEP_MODE if metric == family.SWEEP_METRIC else
                "min" if metric == FID_METRIC else
                "max" if metric in HIGHER_IS_BETTER else "min")
    return metric, mode


def prepare(cfg: Config) -> dict:
    """Driver side, before trials start: make sure what trials need exists (the FID's
    extractor is trained and cached once here, not raced for by concurrent trials); returns
    entries for the sweep spec."""
    if uses_sample_fid(cfg):
        from tune.sample_fid import prepare_extractor
        return prepare_extractor(cfg)
    return {}


def extra_metric_fn(cfg: Config, val: ImageData | None, device, spec):
    """Rank 0 of a trial: a function payload -> {metric: value} computed from the checkpoint
    of each report, or None when the loop's own metrics are all there is."""
    if val is None or not uses_sample_fid(cfg):
        return None
    from tune.sample_fid import SmallSampleFID
    return SmallSampleFID(cfg, val, device, spec.fid_samples, spec.domain_cache)

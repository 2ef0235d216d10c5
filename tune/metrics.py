"""Which metric a sweep optimises: the family's default validation metric, or one the user names,
checked against the metrics a trial really reports."""
from __future__ import annotations

import torch

from pipeline.config import Config
from pipeline.data import ImageData
from pipeline.errors import ConfigError
from pipeline.models import FAMILIES

GAN_FID = "val_fid_domain"  # small-sample FID on domain-classifier features, vs the val split

# What ASHA acts on, reported at every interval. VAE: the beta = 1 bound, whatever beta trains.
DEFAULT_METRIC = {"vae": "val_bpd", "pixelcnn": "val_bpd", "ae": "val_mse", "gan": GAN_FID}
HIGHER_IS_BETTER = {"images_per_s", "d_fake"}


def reported_metrics(cfg: Config, data: ImageData) -> set[str]:
    """The metric names a trial of this config reports: the family's loss terms (one forward on
    two images finds them), their val_ twins for single-phase families, and the GAN's FID."""
    family = FAMILIES[cfg.model]
    num_classes = data.num_classes if cfg.train.conditional else 0
    nets = family.build(cfg.family, data.image_shape, num_classes)
    x = data.images[:2]
    y = data.labels[:2] if cfg.train.conditional else None
    names: set[str] = set()
    with torch.no_grad():
        for phase in family.PHASES:
            names |= set(family.loss(cfg.family, nets, x, y, phase)) - {"loss"}
    if len(family.PHASES) == 1 and cfg.data.val_fraction > 0:
        names |= {f"val_{k}" for k in names}
    if cfg.model == "gan" and cfg.data.val_fraction > 0:
        names.add(GAN_FID)
    return names | {"images_per_s"}


def choose(cfg: Config, data: ImageData, metric: str | None, mode: str | None) -> tuple[str, str]:
    metric = metric or DEFAULT_METRIC[cfg.model]
    known = reported_metrics(cfg, data)
    if metric not in known:
        hint = (" (validation metrics need data.val_fraction > 0)"
                if metric.startswith("val_") and cfg.data.val_fraction == 0 else "")
        raise ConfigError(f"unknown metric {metric!r} for {cfg.model}{hint}; use one of "
                          f"{', '.join(sorted(known))}")
    return metric, mode or ("max" if metric in HIGHER_IS_BETTER else "min")


# --- the GAN's validation metric: small-sample FID on the domain classifier's features -------
def prepare(cfg: Config) -> dict:
    """Driver side, before trials start: make sure what trials need exists (the GAN's FID
    extractor is trained and cached once here, not raced for by concurrent trials); returns
    entries for the sweep spec."""
    if cfg.model == "gan" and cfg.data.val_fraction > 0:
        from tune.gan_fid import prepare_extractor
        return prepare_extractor(cfg)
    return {}


def extra_metric_fn(cfg: Config, val: ImageData | None, device, spec: dict):
    """Rank 0 of a trial: a function payload -> {metric: value} computed from the checkpoint
    of each report, or None when the loop's own metrics are all there is."""
    if cfg.model != "gan" or val is None:
        return None
    from tune.gan_fid import SmallSampleFID
    return SmallSampleFID(cfg, val, device, spec["fid_samples"], spec.get("domain_cache"))

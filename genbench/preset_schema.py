"""The sections of a bench preset (genbench/presets/*.yaml) as typed dataclasses, read by the
same machinery as the training config (pipeline.config.build_section): an unknown key, a wrong
type, a list where a number belongs or a section that is not a mapping is one line, in the same
words as a bad `--config`. Each section comes back as a dict of the keys the preset gave,
converted to their types (a YAML list of extractors becomes a tuple), so that bench passes
exactly what the preset says and leaves every default to eval, tune and train."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import build_section
from pipeline.errors import ConfigError

SECTIONS = ("every_family", "families", "order", "eval", "sweep", "ood", "scaling")
REQUIRED = object()   # a field the preset must give


@dataclass(frozen=True)
class FamilyEntry:
    """every_family, and families.<name>: what the family's training and evaluation get."""
    config: dict | None = None    # layered over the defaults, as a --config file
    n_fake: int | None = None                         # generated images for FID/IS/KID/PR


@dataclass(frozen=True)
class EvalSection:
    """eval: the evaluation protocol of every family (genbench eval's options)."""
    n_real: int | None = None
    extractors: tuple[str, ...] | None = None
    k: int | None = None
    bpd_images: int | None = None
    probe_images: int | None = None
    batch_size: int | None = None
    domain_epochs: float | None = None
    bootstrap: int | None = None
    bootstrap_metrics: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SweepSection:
    """sweep: one genbench tune run."""
    model: str = REQUIRED
    samples: int = REQUIRED
    steps: int = REQUIRED
    config: dict | None = None


@dataclass(frozen=True)
class OODSection:
    """ood: "Can it reject the unseen?" (genbench/bench.py ood_runs and eval_options)."""
    sets: tuple[str, ...] | None = None
    images: int | None = None
    background_steps: int | None = None
    unseen_classes: tuple[int, ...] = ()
    bayes: tuple[str, ...] | None = None
    bayes_images: int | None = None


def run_order(raw, path: Path | str) -> tuple[str, ...]:
    """order: the names of the training runs ("vae", "vae conditional") in the order they start.
    Names the bench does not train (a family left out by --families) are passed over."""
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"preset {path}: order must be a list of run names, e.g. [flow, vae, "
                          f"\"vae conditional\"], got {raw!r}")
    return tuple(items)


LISTS = {"extractors", "bootstrap_metrics", "sets", "bayes"}   # YAML lists kept as tuples
POSITIVE = {"n_fake", "n_real", "k", "bpd_images", "probe_images", "batch_size",
            "domain_epochs", "bootstrap", "samples", "steps", "images", "bayes_images"}


def typed(section_class, raw, where: str, path: Path | str) -> dict:
    """The keys `raw` gives, checked against `section_class` and converted to its types."""
    if raw is None:
        raw = {}
    try:
        built = build_section(section_class, raw, where)
    except ConfigError as exc:
        raise ConfigError(f"preset {path}: {exc}") from None
    out = {}
    for f in dataclasses.fields(section_class):
        value = getattr(built, f.name)
        if value is REQUIRED:
            known = ", ".join(x.name for x in dataclasses.fields(section_class))
            raise ConfigError(f"preset {path}: {where}.{f.name} is required ({where} takes "
                              f"{known})")
        if f.name not in raw:
            continue
        if f.name in LISTS and value is not None:
            items = value if isinstance(value, (list, tuple)) else [value]
            if not all(isinstance(v, str) for v in items):
                raise ConfigError(f"preset {path}: {where}.{f.name} must be a list of names, "
                                  f"got {value!r}")
            value = tuple(items)
        if f.name == "config" and value is not None and not isinstance(value, dict):
            raise ConfigError(f"preset {path}: {where}.config must be a mapping of config "
                              f"sections, e.g. {{train: {{steps: 300}}}}, got {value!r}")
        if f.name in POSITIVE and value is not None and value <= 0:
            raise ConfigError(f"preset {path}: {where}.{f.name} must be positive, got {value!r}")
        out[f.name] = value
    return out

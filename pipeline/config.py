"""Typed, validated configuration. Unknown keys and bad values raise ConfigError.

A config has four sections: `model` (the family name), `data`, `train` and one section named
after the family holding its hyperparameters (e.g. `vae: {beta: 4.0, lr: 1e-3}`). YAML files and
`--set section.key=value` overrides are layered over the defaults in that order.

A config names its family and never the code that defines it: configs come back from
checkpoints, MLflow runs and sweep directories that anyone may have written, so one that carries
`family_module` (what genbench wrote before families came from entry points) is refused rather
than imported; see pipeline/models/__init__.py for where families come from.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.data import check_dataset_name
from pipeline.errors import ConfigError
from pipeline import models
from pipeline.models import DEFAULT_FAMILY, FAMILIES


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"   # fashion-mnist | mnist | cifar10 | path to an ImageFolder
    root: str | None = None          # where downloaded / manually placed files live
    val_fraction: float = 0.1        # cut from the train split with split_seed; test is for eval
    split_seed: int = 0
    image_size: int = 32             # ImageFolder images are resized and centre-cropped to this
    exclude_classes: tuple[int, ...] = ()  # never trained or validated on; eval's "unseen" OOD set


@dataclass(frozen=True)
class TrainConfig:
    steps: int | None = None         # optimizer steps; default: 1 epoch unless epochs is set
    epochs: float | None = None
    batch_size: int = 128            # global: split evenly across workers
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: int | None = None  # default: the cluster's CPUs shared evenly (CPU runs)
    seed: int = 0
    conditional: bool = False        # learn p(x|y) instead of p(x)
    bf16: bool = True                # autocast on GPU only
    # Decay of the exponential moving average of the weights that sampling and evaluation use
    # (pipeline/ema.py). None: the family's default (the GAN's generator: 0.999; the others
    # none); 0: no average; in (0, 1): this decay (every net of a family without a default).
    ema_decay: float | None = None
    log_every: int = 20              # steps between metric points
    eval_every: int = 500            # steps between sample grids and validation metrics
    checkpoint_every: int = 200
    # genbench train skips a checkpoint step this soon after the last checkpoint (the last
    # step's never): Ray Train takes one report per poll (0.5 s, pipeline/trainer.py), and
    # faster ones queue up and hold the end of the run. 0: every checkpoint_every steps.
    checkpoint_min_interval_s: float = 0.5
    keep_checkpoints: int = 2
    max_failures: int = 3            # worker failures tolerated; each resumes from a checkpoint
    # A rank that stalls (hung, SIGSTOPped) fails the others' next collective after this long,
    # and the group restarts from its last checkpoint (Ray's own default: 30 minutes).
    collective_timeout_s: float = 300.0
    # An unreachable MLflow tracking server is waited out this long (what is logged meanwhile
    # waits in a spool on disk) before the run stops; GENBENCH_TRACKING_OUTAGE_S overrides it.
    tracking_outage_s: float = 600.0
    storage_path: str | None = None  # Ray checkpoints; shared storage (s3://, NFS) on clusters


SECTIONS = ("model", "data", "train")


@dataclass(frozen=True)
class Config:
    model: str = DEFAULT_FAMILY
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    family: Any = None               # FAMILIES[model].Config

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Mapping | None) -> "Config":
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a config must be a mapping of sections (model, data, train, "
                              f"<family>), got {type(raw).__name__}")
        raw = dict(raw)
        if "family_module" in raw:  # refused before anything is looked up or imported
            named = " ".join(str(raw["family_module"]).split())[:200]   # one line, short
            raise ConfigError(f"config names code to import (family_module: {named}); "
                              f"genbench never imports code named by a config, checkpoint or "
                              f"run: install the family as a package with a "
                              f"`{models.ENTRY_POINT_GROUP}` entry point")
        model = raw.pop("model", DEFAULT_FAMILY)
        if not isinstance(model, str) or model not in FAMILIES:
            raise ConfigError(f"unknown model {model!r}; use one of {', '.join(FAMILIES)} (a "
                              f"family of your own: install it as a package with a "
                              f"`{models.ENTRY_POINT_GROUP}` entry point)")
        try:
            family_cls = FAMILIES[model].Config
        except ImportError as exc:
            raise ConfigError(f"family {model}: cannot import {models.module_path(model)} "
                              f"({exc}); reinstall the package that provides it") from None
        known = {"data", "train", model}
        for key in raw:
            if key not in known:
                hint = (f" (this run's model is {model}; section {key!r} belongs to another family)"
                        if key in FAMILIES else "")
                raise ConfigError(f"unknown config section {key!r}{hint}; "
                                  f"use model, data, train or {model}")
        cfg = cls(model=model,
                  data=_build(DataConfig, raw.get("data"), "data"),
                  train=_build(TrainConfig, raw.get("train"), "train"),
                  family=_build(family_cls, raw.get(model), model))
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        """Plain data (lists, not tuples): YAML, JSON and checkpoints take it as it is. The
        family is named, never its module (see the module docstring)."""
        return {"model": self.model, "data": _plain(self.data), "train": _plain(self.train),
                self.model: _plain(self.family)}

    def flat(self) -> dict[str, Any]:
        """{'train.batch_size': 128, '<family>.lr': 1e-3, ...}: MLflow params."""
        out = {"model": self.model}
        for section, values in self.to_dict().items():
            if isinstance(values, dict):
                out.update({f"{section}.{k}": v for k, v in values.items()})
        return out

    # --- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        t = self.train
        positive = {"train.batch_size": t.batch_size, "train.workers": t.workers,
                    "train.log_every": t.log_every, "train.collective_timeout_s":
                    t.collective_timeout_s,
                    "train.eval_every": t.eval_every, "train.checkpoint_every": t.checkpoint_every,
                    "train.keep_checkpoints": t.keep_checkpoints}
        if t.steps is not None:
            positive["train.steps"] = t.steps
        if t.epochs is not None:
            positive["train.epochs"] = t.epochs
        if t.cpus_per_worker is not None:
            positive["train.cpus_per_worker"] = t.cpus_per_worker
        for name, value in self.family.__dict__.items():
            if name.startswith("lr"):
                positive[f"{self.model}.{name}"] = value
            elif name in ("latent_dim", "width", "channels", "layers", "head_channels"):
                positive[f"{self.model}.{name}"] = value
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if t.steps is not None and t.epochs is not None:
            raise ConfigError("give train.steps or train.epochs, not both")
        if t.batch_size % t.workers:
            raise ConfigError(f"batch size {t.batch_size} does not divide across {t.workers} "
                              f"workers; use a multiple of {t.workers}")
        if t.max_failures < 0:
            raise ConfigError(f"train.max_failures must be >= 0, got {t.max_failures}")
        if not t.tracking_outage_s >= 0:
            raise ConfigError(f"train.tracking_outage_s must be >= 0 seconds, got "
                              f"{t.tracking_outage_s}")
        if not t.checkpoint_min_interval_s >= 0:  # also refuses nan
            raise ConfigError(f"train.checkpoint_min_interval_s must be >= 0 seconds, got "
                              f"{t.checkpoint_min_interval_s}")
        if t.ema_decay is not None and not 0 <= t.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must lie in [0, 1) (0: no weight average), "
                              f"got {t.ema_decay}")
        if not 0 <= self.data.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must lie in [0, 1), got {self.data.val_fraction}")
        check_dataset_name(self.data.dataset)
        excluded = self.data.exclude_classes
        if any(k < 0 for k in excluded) or len(set(excluded)) != len(excluded):
            raise ConfigError(f"data.exclude_classes must be distinct class indices >= 0, "
                              f"got {list(excluded)}")
        if hasattr(self.family, "validate"):
            try:
                self.family.validate()
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


def _plain(section) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(section).items()}


def build_section(dc, values: Mapping | None, section: str):
    """A dataclass section from a mapping, as a config file's sections are read: an unknown key,
    a value of the wrong type or a section that is not a mapping is a one-line ConfigError
    (genbench/preset_schema.py reads bench presets with it)."""
    return _build(dc, values, section)


def _build(dc, values: Mapping | None, section: str):
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section {section!r} must be a mapping of keys, e.g. "
                          f"{section}: {{{dataclasses.fields(dc)[0].name}: ...}}, got "
                          f"{str(values)[:80]!r}")
    values = dict(values)
    fields = {f.name: f for f in dataclasses.fields(dc)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {section}.{key}; known keys: "
                              f"{', '.join(fields)}")
        values[key] = _coerce(fields[key], value, f"{section}.{key}")
    return dc(**values)


def _coerce(f: dataclasses.Field, value, name: str):
    """YAML gives '1e-3' as a string and 4 where a float is meant: convert to the field's type."""
    default = f.default
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{name} cannot be empty")
    if kind.startswith("tuple[int"):
        items = value if isinstance(value, (list, tuple)) else [value]
        try:
            if any(isinstance(v, bool) or float(v) != int(v) for v in items):
                raise ValueError
            return tuple(int(v) for v in items)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name} must be a list of integers, e.g. [3], got {value!r}") \
                from None
    try:
        if kind.startswith("bool") or isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            number = float(value)
        elif kind.startswith("str"):
            return str(value)
        else:
            return value
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be {kind.split(' ')[0]}, got {value!r}") from None
    if not math.isfinite(number):  # nan passes every `<= 0` check, and inf overflows int()
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return number


def parse_overrides(pairs: list[str]) -> dict:
    """['train.steps=100', 'train.seed=1'] -> {'train': {'steps': 100, 'seed': 1}}."""
    out: dict = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects section.key=value, got {pair!r}")
        value = yaml.safe_load(text) if text else None
        if key == "model":
            out["model"] = value
            continue
        section, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(f"--set key {key!r} needs a section, e.g. train.{key} or vae.{key}")
        out.setdefault(section, {})[name] = value
    return out


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML "
                          f"({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    raw.pop("tune", None)  # the sweep's search space; `genbench tune` reads it
    return raw

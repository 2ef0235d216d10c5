"""Checkpoints: model + optimizer states, step, config and MLflow run id in one torch file,
and the weight averages of the nets that keep one (pipeline/ema.py) under "ema".

A checkpoint is untrusted input: it is read with weights_only=True, and a corrupt or mismatched
one is a ConfigError (one line, exit 2), never a traceback.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch

from pipeline import storage
from pipeline.errors import ConfigError
from pipeline.models.layers import unwrap

FILENAME = "checkpoint.pt"
FORMAT = 1  # bump when the payload's layout changes; load() refuses any other version


def save(directory: str | Path, nets, optimizers, step: int, config: dict, run_id: str,
         ema: dict | None = None) -> Path:
    """ema: the weight averages' state (pipeline.ema.WeightAverage.state_dict()), if any; a
    checkpoint without one (written before the EMA existed, or by a run without) still loads."""
    path = Path(directory) / FILENAME
    payload = {"format": FORMAT, "step": step, "config": config, "mlflow_run_id": run_id,
               "nets": {k: unwrap(v).state_dict() for k, v in nets.items()},
               "optimizers": {k: v.state_dict() for k, v in optimizers.items()}}
    if ema is not None:
        payload["ema"] = ema
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint.pt
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


class CorruptCheckpoint(ConfigError):
    """The file does not load at all: torn by a kill mid-copy, truncated, or not a torch file."""


def load(path: str | Path) -> dict:
    """The payload of checkpoint.pt (or of the checkpoint directory holding it). A URI
    (s3://..., pipeline/storage.py) is downloaded to a temp dir and loaded the same way."""
    if storage.is_uri(path):
        return _load_remote(str(path))
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}; pass a checkpoint.pt or its directory")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CorruptCheckpoint(f"checkpoint {path} is corrupt or not a genbench checkpoint "
                          f"({type(exc).__name__}); use an earlier checkpoint of the run "
                          f"(train --resume takes the newest that loads) or start a new run"
                          ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise ConfigError(f"checkpoint {path} is not a genbench checkpoint (no format "
                          f"version); pass a checkpoint.pt that genbench train wrote")
    if payload["format"] != FORMAT:
        raise ConfigError(f"checkpoint {path} has format version {payload['format']!r}, this "
                          f"genbench reads version {FORMAT}; use the genbench release that "
                          f"wrote it, or start a new run")
    return payload


def _load_remote(uri: str) -> dict:
    file_uri = uri if storage.name(uri) == FILENAME else storage.join(uri, FILENAME)
    try:
        if not storage.is_file(file_uri):
            raise ConfigError(f"no checkpoint at {file_uri}; pass a checkpoint.pt or its "
                              f"directory")
        with storage.downloaded(file_uri) as local:
            try:
                return load(local)
            except ConfigError as exc:  # name the checkpoint, not the temp copy
                raise type(exc)(str(exc).replace(local, file_uri)) from None
    except storage.StoreError as exc:
        raise ConfigError(f"{exc}; check the storage credentials and endpoint (AWS_* or "
                          f"GOOGLE_APPLICATION_CREDENTIALS in the environment)") from None


def restore(payload: dict, nets, optimizers, source: str = "checkpoint") -> int:
    """Load states into nets and optimizers; returns the step to continue from."""
    if set(payload["nets"]) != set(nets):
        raise ConfigError(f"{source} holds networks {sorted(payload['nets'])}, this model "
                          f"has {sorted(nets)}; resume with the model it was trained with")
    try:
        for name, net in nets.items():
            unwrap(net).load_state_dict(payload["nets"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(payload["optimizers"][name])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{source} does not match this model's shapes ({first}); "
                          f"resume with the config it was trained with") from None
    return int(payload["step"])


def sampling_weights(payload: dict) -> dict[str, dict]:
    """{net name: state dict} to sample and evaluate with: the averaged weights of the nets that
    have an EMA in the checkpoint, the trained weights of the others."""
    averaged = (payload.get("ema") or {}).get("nets") or {}
    return {name: averaged.get(name, state) for name, state in payload["nets"].items()}


def use_averaged_weights(payload: dict, nets, source: str = "checkpoint") -> list[str]:
    """Load the checkpoint's EMA weights into those nets (after restore()); returns their
    names, [] when the checkpoint has none."""
    averaged = (payload.get("ema") or {}).get("nets") or {}
    unknown = sorted(set(averaged) - set(nets))
    if unknown:
        raise ConfigError(f"{source} holds weight averages of {unknown}, which this model "
                          f"does not have; pass a checkpoint genbench train wrote")
    try:
        for name, state in averaged.items():
            unwrap(nets[name]).load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{source}: its weight average of {name} does not fit the model "
                          f"({first}); pass a checkpoint genbench train wrote") from None
    return sorted(averaged)

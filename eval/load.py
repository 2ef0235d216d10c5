"""Load a trained model for evaluation: from an MLflow run id (its `checkpoint/checkpoint.pt`
artifact) or from a checkpoint path. The nets are rebuilt from the checkpoint's own config.
A net with a weight average in the checkpoint (EMA, pipeline/ema.py: the GAN's generator by
default) gets the averaged weights: they are what the model samples and is evaluated with, and
`LoadedModel.ema` says so for the evaluation's stamp."""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import checkpoint as ckpt
from pipeline import ema, schema, storage, tracking
from pipeline.config import Config
from pipeline.data import ImageData, load_config_split
from pipeline.errors import ConfigError
from pipeline.loop import build_nets
from pipeline.trainer import newest_loadable_checkpoint

ARTIFACT = f"checkpoint/{ckpt.FILENAME}"


@dataclass
class LoadedModel:
    cfg: Config
    nets: dict
    payload: dict
    step: int
    run_id: str | None      # the MLflow run the checkpoint belongs to (None: unknown)
    source: str             # where it came from, for messages and tags
    test: ImageData         # the dataset's test split (the reference split)
    ema: str = "none"       # the nets holding averaged weights, e.g. "generator (decay 0.999,
                            # 30 updates)", or "none": every net has its trained weights


def download_checkpoint(run_id: str) -> dict:
    """The run's checkpoint artifact; for a finished run whose Ray directory is on an object
    store (s3://..., the run's genbench.ray_run_dir tag), without that artifact (it went to a
    store the driver does not see, e.g. a worker node's own mlruns/), its newest checkpoint
    there that loads."""
    run = tracking.get_run(run_id)  # a clear error for an unknown id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.client().download_artifacts(run_id, ARTIFACT, tmp)
        except Exception as exc:  # MLflow raises its own types for a missing artifact
            stored = _from_run_storage(run)
            if stored is not None:
                return stored
            kind = schema.kind(run.data.tags) or "not genbench"
            raise ConfigError(f"run {run_id} ({kind}, {run.info.status}) has no {ARTIFACT} "
                              f"artifact ({type(exc).__name__}); evaluate a finished "
                              f"`genbench train` run, or pass --checkpoint PATH") from None
        return ckpt.load(path)


def _from_run_storage(run) -> dict | None:
    """The newest loadable checkpoint of a FINISHED run in its object store, or None (local
    Ray directories are not read here: the artifact is what a local run is evaluated from)."""
    run_dir = run.data.tags.get(schema.RAY_RUN_DIR)
    if run.info.status != "FINISHED" or not run_dir or not storage.is_uri(run_dir):
        return None
    path, payload, _ = newest_loadable_checkpoint(run_dir)
    if payload is None or payload.get("mlflow_run_id") != run.info.run_id:
        return None
    print(f"genbench: run {run.info.run_id} has no {ARTIFACT} artifact; evaluating its "
          f"checkpoint {path}", file=sys.stderr, flush=True)
    return payload


def model_from_payload(payload: dict, device="cpu", source: str = "checkpoint") -> LoadedModel:
    try:
        cfg = Config.from_dict(payload["config"])
    except ConfigError as exc:  # e.g. a config that names code to import: say whose it is
        raise ConfigError(f"{source}: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{source} has no usable config ({exc}); is it a genbench "
                          f"checkpoint?") from None
    d = cfg.data
    test = load_config_split(d, "test")  # in-distribution: without data.exclude_classes
    nets, opts = build_nets(cfg, test, torch.device(device), 1)
    step = ckpt.restore(payload, nets, opts, source=source)
    averaged = ckpt.use_averaged_weights(payload, nets, source)
    for net in nets.values():
        net.eval().requires_grad_(False)
    return LoadedModel(cfg, nets, payload, step, payload.get("mlflow_run_id"), source, test,
                       ema.describe(payload.get("ema")) if averaged else "none")


def load_model(run_id: str | None = None, checkpoint: str | None = None,
               device="cpu") -> LoadedModel:
    if (run_id is None) == (checkpoint is None):
        raise ConfigError("give --run-id ID or --checkpoint PATH (one of them)")
    if run_id is not None:
        payload = download_checkpoint(run_id)
        model = model_from_payload(payload, device, f"run {run_id}")
        model.run_id = run_id
        return model
    payload = ckpt.load(checkpoint)
    shown = checkpoint if storage.is_uri(checkpoint) else Path(checkpoint)  # s3://..., or a path
    return model_from_payload(payload, device, f"checkpoint {shown}")

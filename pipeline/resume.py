"""`genbench train --resume RUN_ID`: find the interrupted run's newest checkpoint, check it
fits the model before Ray starts, and say how to continue a run that stopped."""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline import checkpoint as ckpt
from pipeline import schema, storage, tracking
from pipeline.config import Config
from pipeline.data import load_split
from pipeline.errors import ConfigError
from pipeline.trainer import find_latest_checkpoint, newest_loadable_checkpoint

RUN_DIR_TAG = schema.RAY_RUN_DIR   # the run's Ray directory, where its checkpoints are


def prepare_resume(run_id: str) -> tuple[Config, dict, Path | str]:
    """Config, checkpoint payload and path of an interrupted run, or a one-line error.

    The newest checkpoint that loads is used: a kill while Ray copied the newest one into
    storage can leave it torn, and the one before it is still whole. Each skipped checkpoint
    is said in one line on stderr. The path is a Path on local storage, a URI on an object
    store (pipeline/storage.py)."""
    run = tracking.get_run(run_id)
    run_dir = run.data.tags.get(RUN_DIR_TAG)
    if not run_dir:
        raise ConfigError(f"MLflow run {run_id} was not made by genbench train; "
                          f"nothing to resume")
    if run.info.status == "FINISHED":
        raise ConfigError(f"run {run_id} is FINISHED; nothing to resume (start a new run "
                          f"for more steps)")
    latest, payload, skipped = newest_loadable_checkpoint(run_dir)
    torn = ", ".join(f"{name} (corrupt)" for name in skipped)
    if latest is None and not skipped:
        raise ConfigError(f"run {run_id} has no checkpoint under {run_dir}; "
                          f"start it again without --resume")
    if latest is None:
        raise ConfigError(f"no checkpoint of run {run_id} loads ({torn}); start a new run")
    if payload.get("mlflow_run_id") != run_id:
        raise ConfigError(f"checkpoint {latest} belongs to run {payload.get('mlflow_run_id')}, "
                          f"not {run_id}; resume that run instead")
    cfg = Config.from_dict(payload["config"])
    if skipped:
        print(f"genbench: skipped checkpoint(s) that do not load: {torn}; resuming from "
              f"{storage.name(latest)}", file=sys.stderr, flush=True)
    return cfg, payload, latest


def validate_checkpoint_shapes(cfg: Config, payload: dict, source: str) -> None:
    """Build the nets on CPU and load the checkpoint: a mismatch fails here, not in a worker."""
    import torch

    from pipeline.loop import build_nets
    data = load_split(cfg.data.dataset, "val", cfg.data.root, max(cfg.data.val_fraction, 0.01),
                      cfg.data.split_seed, cfg.data.image_size)
    nets, opts = build_nets(cfg, data, torch.device("cpu"), 1)
    ckpt.restore(payload, nets, opts, source=source)


def resume_hint(run_id: str, run_dir: str) -> str:
    """How to continue a stopped run: from its newest checkpoint, or from scratch if none."""
    if "://" not in run_dir:  # local storage: say which step the checkpoint holds
        latest = find_latest_checkpoint(run_dir)
        if latest is None:
            return "it stopped before its first checkpoint: start it again"
        step = int(latest.name.rsplit("_", 1)[-1])
        return f"its checkpoint of step {step} is kept: genbench train --resume {run_id}"
    return f"continue from its last checkpoint: genbench train --resume {run_id}"

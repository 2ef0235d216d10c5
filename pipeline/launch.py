"""Driver side of `genbench train`: validate, open the MLflow run, fit a TorchTrainer, close.
The cluster checks are in cluster.py, the TorchTrainer in trainer.py, --resume in resume.py.

Everything that can be checked before Ray starts is checked first (config, data, checkpoint),
so bad input costs a second and leaves nothing behind.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import faults, schema, storage, tracking
from pipeline.cluster import (init_ray, joined_cluster, require_shared_storage,
                              resolve_resources, shortfall)
from pipeline.config import Config
from pipeline.data import load_config_split
from pipeline.errors import ConfigError, RunStopped
from pipeline.models import FAMILIES
from pipeline.resume import RUN_DIR_TAG, prepare_resume, resume_hint, validate_checkpoint_shapes
from pipeline.signals import Terminated
from pipeline.signals import exit_code as signal_exit_code
from pipeline.trainer import make_trainer, storage_path
from pipeline.warm import WarmTrainer, runs_warm

@dataclass
class TrainResult:
    run_id: str
    experiment: str
    steps: int
    metrics: dict
    seconds: float
    checkpoint: str | None


def load_train_split(cfg: Config, with_val: bool = True):
    """The train split (and validation split, None without one or when not asked for) a run
    trains on; a missing dataset or a batch larger than the split is a one-line error before
    Ray starts."""
    d = cfg.data
    train = load_config_split(d, "train")
    if cfg.train.batch_size > len(train):
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} exceeds the {len(train)} "
                          f"training images; lower it")
    val = load_config_split(d, "val") if d.val_fraction > 0 and with_val else None
    return train, val


def train(cfg: Config, experiment: str = "genbench", address: str | None = None,
          resume: str | None = None, verbose: bool = False, quiet: bool = False,
          extra_tags: dict | None = None, warm=None) -> TrainResult:
    """warm: a pipeline.warm.SlotPool (genbench bench): a run that can train in a warm slot does;
    the others, and a warm run after a failure, use Ray Train."""
    import ray

    from pipeline.loop import total_steps
    from pipeline.progress import ProgressPrinter
    from pipeline.train import train_loop_per_worker

    fault = os.environ.get(faults.ENV)  # tests: a deterministic worker fault
    faults.parse(fault)
    start_payload = None
    if resume:
        cfg_saved, start_payload, latest = prepare_resume(resume)
        cfg = cfg_saved
        validate_checkpoint_shapes(cfg, start_payload, f"checkpoint {latest}")
    # Data first: a missing dataset is a one-line error before Ray starts.
    train_data, _ = load_train_split(cfg, with_val=False)
    steps = total_steps(cfg, len(train_data) // cfg.train.batch_size)
    if resume and start_payload["step"] >= steps:
        raise ConfigError(f"run {resume} already reached step {start_payload['step']} "
                          f"of {steps}; nothing to resume")
    tracking.set_outage_budget(cfg.train.tracking_outage_s)
    require_reachable_storage(storage_path(cfg))
    init_ray(address, verbose)
    joined = joined_cluster(address)
    cfg = resolve_resources(cfg, can_grow=joined)
    require_shared_storage(cfg, grows=joined and shortfall(cfg, ray.cluster_resources())
                           is not None)

    warm = warm if warm is not None and runs_warm(cfg, fault) else None
    if warm is not None:
        warm.wait_until_started()
    if resume:
        run_id = resume
        run_dir = tracking.get_run(run_id).data.tags[RUN_DIR_TAG]
        if storage.is_uri(run_dir):  # an object store (s3://...): listed through pyarrow.fs
            attempt = len(storage.run_dirs(run_dir)) + 1
            name = f"{storage.name(run_dir)}-resume{attempt}"
        else:
            attempt = len(__import__("glob").glob(f"{run_dir}*")) + 1
            name = f"{Path(run_dir).name}-resume{attempt}"
        tracking.client().update_run(run_id, status="RUNNING")
        if warm is not None:
            tracking.set_tags(run_id, {schema.EXECUTOR: schema.WARM_SLOT})
        # Ray Train V2 dropped resume_from_checkpoint: the workers load this path themselves.
        resume_from = str(latest)
    else:
        tags = tracking.versions_and_hardware(cfg.train.gpu)
        tags.update({schema.MODEL: cfg.model, schema.DATASET: cfg.data.dataset,
                     schema.KIND: schema.TRAIN, **(extra_tags or {})})
        if warm is not None:
            tags[schema.EXECUTOR] = schema.WARM_SLOT
        run_id = tracking.start_run(experiment,
                                    f"{cfg.model}-{cfg.data.dataset}-seed{cfg.train.seed}",
                                    {**cfg.flat(), "train.total_steps": steps}, tags)
        name = f"genbench-{cfg.model}-{run_id[:12]}"
        run_dir = storage.join(storage_path(cfg), name)  # a URI keeps its ?query at the end
        tracking.set_tags(run_id, {RUN_DIR_TAG: run_dir})
        resume_from = None

    progress = None if quiet else ProgressPrinter(steps, FAMILIES[cfg.model].PROGRESS_KEYS)
    loop_config = {"config": cfg.to_dict(), "run_id": run_id,
                   "tracking_uri": tracking.tracking_uri(), "resume_from": resume_from,
                   "progress_board": progress.board if progress else None, "fault": fault}

    def ray_trainer(start=resume_from, name=name):
        return make_trainer(train_loop_per_worker, {**loop_config, "resume_from": start},
                            cfg, name, storage_path(cfg), cfg.train.keep_checkpoints)

    def after_warm_failure(start):
        tracking.set_tags(run_id, {schema.EXECUTOR: f"{schema.WARM_SLOT}, then Ray Train"})
        return ray_trainer(start, f"{name}-restart")

    if warm is not None:
        trainer = WarmTrainer(warm, loop_config, storage.join(storage_path(cfg), name), run_dir,
                              cfg.train.keep_checkpoints, after_warm_failure)
    else:
        trainer = ray_trainer()
    if not quiet:
        print(f"genbench: training {cfg.model} on {cfg.data.dataset} with "
              f"{cfg.train.workers} worker(s), {steps} steps; MLflow run {run_id} (if it "
              f"stops: genbench train --resume {run_id})", file=sys.stderr, flush=True)
    if progress:
        progress.start()
    t0 = time.time()
    try:
        result = fit_interruptibly(trainer)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (pipeline/signals.py)
        if isinstance(trainer, WarmTrainer):
            trainer.stop()
        _close_quietly(run_id, "KILLED", budget_s=0)  # a stop does not wait out an outage
        how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        raise RunStopped(f"{how}; {resume_hint(run_id, run_dir)}",
                         signal_exit_code(stop)) from None
    except Exception:
        lost = tracking.unreachable(tracking.tracking_uri())
        # The workers already waited out the outage budget: the status goes to the spool now.
        _close_quietly(run_id, "FAILED", budget_s=0 if lost else None)
        if lost:
            spooled = tracking.spool_hint(run_id)
            raise RunStopped(f"lost the MLflow tracking server at {tracking.tracking_uri()} "
                             f"({lost}); when it is back, "
                             f"{spooled + '; ' if spooled else ''}"
                             f"{resume_hint(run_id, run_dir)}") from None
        print(f"genbench: training failed; {resume_hint(run_id, run_dir)}", file=sys.stderr)
        raise
    finally:
        if progress:
            progress.stop()
    seconds = time.time() - t0
    tracking.end_run(run_id, "FINISHED")
    checkpoint = result.checkpoint.path if result.checkpoint else None
    if checkpoint and storage.is_uri(storage_path(cfg)):  # Ray's path has no scheme
        checkpoint = storage.to_uri(storage_path(cfg), checkpoint)
    return TrainResult(run_id, experiment, steps, dict(result.metrics or {}), seconds, checkpoint)


def require_reachable_storage(path: str) -> None:
    """A checkpoint store given as a URI (s3://bucket/prefix) answers before Ray starts: a
    missing bucket, endpoint or credentials is a one-line error, not a worker's traceback."""
    if not storage.is_uri(path):
        return
    try:
        storage.check_reachable(path)
    except storage.StoreError as exc:
        raise ConfigError(f"--storage-path: {exc}; set the store's credentials (and "
                          f"AWS_ENDPOINT_URL for an S3-compatible endpoint) in the environment "
                          f"of the driver and of every Ray node") from None


def fit_interruptibly(trainer):
    """trainer.fit() on a helper thread, so that Ctrl-C reaches this thread as KeyboardInterrupt.
    On the main thread Ray Train installs its own SIGINT handler, which aborts the run and ends
    the process (exit 0 or 1, no word said) before genbench can mark the run and say how to
    resume it. Leaving here ends the driver, and with it the run's workers."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)  # short waits: a signal is handled between them
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _close_quietly(run_id: str, status: str, budget_s: float | None = None) -> None:
    """Mark the MLflow run stopped, if the tracking server still answers (it may be what
    failed; past budget_s the status waits in the spool for `genbench tracking replay`);
    --resume reopens it either way."""
    try:
        tracking.end_run(run_id, status, budget_s=budget_s)
    except Exception:
        pass

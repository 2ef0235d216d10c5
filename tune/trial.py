"""One trial of a sweep: the same training loop as `genbench train`, logged to a child MLflow run.

Single-worker trials run pipeline.loop.fit directly inside the Tune trial (no extra processes);
multi-worker trials start a TorchTrainer inside the trial, whose rank 0 forwards metrics to Tune
through TuneReportCallback (tens of seconds to start its workers). Either way every report
carries the sweep metric and the checkpoint of the same step, so ASHA can stop a trial and
Tuner.restore can continue it. `train_seconds` is fit()'s own clock, validation included.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import torch

from pipeline import checkpoint as ckpt
from pipeline import schema, tracking
from pipeline.config import Config
from pipeline.data import ImageData, load_config_split
from pipeline.loop import Context, fit
from tune import spaces
from tune.spec import SweepSpec, gpu_share

TRIAL_ID_TAG = schema.TRIAL_ID
STATUS_TAG = schema.TRIAL_STATUS   # running | completed | early_stopped | failed | interrupted
STARTS_TAG = schema.TRIAL_STARTS   # how often the trial function began (1 unless resumed)
DRIVER_MEMORY = 2**28                  # bytes, logical: what a multi-worker trial's driver claims
# A multi-worker trial's workers run in a placement group whose lifetime is the sweep driver's
# job, not the trial's: when Tune stops the trial (ASHA) it kills the trial's process, Ray Train's
# controller dies with it, and only Ray Train's cleaner would remove the group, which needs the
# state API (the dashboard). Rank 0 reports the group's id under this key; the driver removes it.
PLACEMENT_GROUP_KEY = "placement_group"


def trial_config(spec: SweepSpec, sampled: dict) -> Config:
    return spaces.apply(spec.trial(), sampled)


def open_child_run(spec: SweepSpec, sampled: dict, cfg: Config, trial_id: str) -> str:
    """The trial's MLflow run under the sweep's parent: created on the first start, reopened
    when a resumed sweep restarts the trial (so a trial keeps one run)."""
    uri = spec.tracking_uri
    found = [r for r in tracking.child_runs(spec.parent_run_id, uri)
             if r.data.tags.get(TRIAL_ID_TAG) == trial_id]
    if found:
        run = found[0]
        starts = int(run.data.tags.get(STARTS_TAG, "1")) + 1
        tracking.set_tags(run.info.run_id, {STARTS_TAG: starts, STATUS_TAG: "running"}, uri)
        tracking.client(uri).update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    tags = {"mlflow.parentRunId": spec.parent_run_id, schema.KIND: schema.TUNE_TRIAL,
            schema.MODEL: cfg.model, schema.DATASET: cfg.data.dataset,
            TRIAL_ID_TAG: trial_id, STARTS_TAG: 1, STATUS_TAG: "running",
            schema.SAMPLED: json.dumps(sampled)}
    params = {**cfg.flat(), "train.total_steps": spec.steps}
    return tracking.start_run(spec.experiment, f"trial-{trial_id}", params, tags, uri=uri)


class Reporter:
    """Wraps a send(metrics, checkpoint_dir) function for fit(): adds the extra validation metric
    (the GAN's FID) and the training seconds so far, and logs every report to the child run."""

    def __init__(self, cfg: Config, ctx: Context, val: ImageData | None, spec: SweepSpec,
                 send: Callable[[dict, str | None], None], seconds_before: float = 0.0):
        from tune.metrics import extra_metric_fn
        self.ctx, self.send = ctx, send
        # restarted=True: a trial that Tune or Ray Train restarts (before its first checkpoint, or
        # after a sweep driver was killed) repeats steps its child run may already hold.
        self.logger = (tracking.RunLogger(ctx.run_id, ctx.tracking_uri, restarted=True)
                       if ctx.rank == 0 else None)
        self.extra = extra_metric_fn(cfg, val, ctx.device, spec) if ctx.rank == 0 else None
        self.seconds_before, self.t0 = seconds_before, time.perf_counter()

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        metrics = dict(metrics)
        if self.ctx.rank == 0:
            if self.extra is not None and checkpoint_dir is not None:
                metrics.update(self.extra(ckpt.load(checkpoint_dir)))
            metrics["train_seconds"] = self.seconds_before + time.perf_counter() - self.t0
            self.logger.metrics({k: v for k, v in metrics.items() if k != "step"},
                                int(metrics["step"]))
            self.logger.flush()  # every report holds a checkpoint: its metrics are stored first
        self.send(metrics, checkpoint_dir)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()


def _seconds_before(run_id: str, uri: str) -> float:
    """Training seconds a restarted trial had already spent (its last logged value)."""
    return float(tracking.latest_metrics(run_id, uri).get("train_seconds", 0.0))


def _device(cfg: Config) -> torch.device:
    return torch.device("cuda" if cfg.train.gpu and torch.cuda.is_available() else "cpu")


def direct_trial(sampled: dict, spec: SweepSpec, train_data: ImageData, val_data: ImageData | None):
    """Function trainable for single-worker trials: fit() in this process."""
    from ray import tune

    # This process is reused for the next trial once Tune stops this one; its reset waits for
    # this thread at most TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s by default, too short under load:
    # the next trial then errors).
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = "120"
    cfg = trial_config(spec, sampled)
    tracking.set_outage_budget(cfg.train.tracking_outage_s)
    torch.set_num_threads(cfg.train.cpus_per_worker)
    trial_id = tune.get_context().get_trial_id()
    run_id = open_child_run(spec, sampled, cfg, trial_id)
    start, restored = None, tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            start = ckpt.load(directory)
    ctx = Context(device=_device(cfg), run_id=run_id, tracking_uri=spec.tracking_uri)

    def send(metrics: dict, checkpoint_dir: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    seconds = _seconds_before(run_id, ctx.tracking_uri) if start else 0.0
    reporter = Reporter(cfg, ctx, val_data, spec, send, seconds)
    try:
        fit(cfg, ctx, reporter, start=start, logger=None, data=train_data, val=val_data)
    finally:
        reporter.close()


def distributed_trial(sampled: dict, spec: SweepSpec) -> None:
    """Function trainable for multi-worker trials: this trial only waits (0.01 CPU) while a
    TorchTrainer runs the DDP workers and TuneReportCallback forwards rank 0's reports."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.storage import is_uri, join, run_dirs
    from pipeline.trainer import make_trainer, newest_loadable_checkpoint

    cfg = trial_config(spec, sampled)
    tracking.set_outage_budget(cfg.train.tracking_outage_s)
    trial_id = tune.get_context().get_trial_id()
    run_id = open_child_run(spec, sampled, cfg, trial_id)
    storage = join(spec.sweep_dir, "trainers")   # a URI keeps its ?query at the end
    # A restarted trial (resumed sweep) continues from its trainer's last checkpoint that loads
    # (a killed sweep may have torn the newest), under a new trainer name so Ray Train does not
    # mix the two attempts.
    latest, _, _ = newest_loadable_checkpoint(join(storage, trial_id))
    attempt = len(run_dirs(join(storage, trial_id)) if is_uri(storage) else
                  __import__("glob").glob(f"{storage}/{trial_id}*")) + 1
    trainer = make_trainer(
        tune_loop_per_worker,
        {"config": cfg.to_dict(), "run_id": run_id, "spec": spec,
         "tracking_uri": spec.tracking_uri,
         "seconds_before": _seconds_before(run_id, spec.tracking_uri) if latest else 0.0,
         "resume_from": str(latest) if latest else None},
        cfg, f"{trial_id}-attempt{attempt}", storage, keep_checkpoints=1,
        callbacks=[TuneReportCallback()])
    trainer.fit()


def tune_loop_per_worker(loop_config: dict) -> None:
    """Each DDP rank of a multi-worker trial: fit() with a report that goes to ray.train."""
    import ray.train
    import ray.train.torch
    import ray.util

    cfg = Config.from_dict(loop_config["config"])
    tracking.set_outage_budget(cfg.train.tracking_outage_s)
    context = ray.train.get_context()
    torch.set_num_threads(cfg.train.cpus_per_worker)
    ctx = Context(rank=context.get_world_rank(), world=context.get_world_size(),
                  device=ray.train.torch.get_device(), run_id=loop_config["run_id"],
                  tracking_uri=loop_config["tracking_uri"])
    start, restored = None, ray.train.get_checkpoint()
    if restored is not None:  # a restart after a worker failure
        with restored.as_directory() as directory:
            start = ckpt.load(directory)
    elif loop_config.get("resume_from"):  # a resumed sweep: the trial's last checkpoint
        start = ckpt.load(loop_config["resume_from"])
    d = cfg.data
    data = load_config_split(d, "train")
    val = (load_config_split(d, "val")
           if d.val_fraction > 0 else None)

    group = ray.util.get_current_placement_group()

    def send(metrics: dict, checkpoint_dir: str | None) -> None:
        step = int(metrics["step"])
        if group is not None:  # for the sweep driver to release it, see SweepMonitor
            metrics[PLACEMENT_GROUP_KEY] = group.id.hex()
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=f"checkpoint_{step:09d}" if checkpoint_dir else None)

    reporter = Reporter(cfg, ctx, val, loop_config["spec"], send, loop_config["seconds_before"])
    try:
        fit(cfg, ctx, reporter, start=start, logger=None, data=data, val=val)
    finally:
        reporter.close()


def make_trainable(spec: SweepSpec, train_data: ImageData, val_data: ImageData | None) -> Any:
    """The Tune trainable with its resources: a whole trial for single-worker sweeps (with a
    GPU, or a share of one); for multi-worker ones a driver that only waits while its
    TorchTrainer asks for the CPUs. That driver claims no CPU at all (Tune refuses an empty
    request, so it claims a little memory): even 0.01 CPU would leave 1.99 of 2 CPUs, and a
    2-worker trainer could never start."""
    from ray import tune

    t = spec.trial().train
    if t.workers == 1:
        # --trials-per-gpu N: a 1/N share, so that N trials train on one GPU at once
        resources = {"cpu": t.cpus_per_worker,
                     **({"gpu": gpu_share(spec.trials_per_gpu)} if t.gpu else {})}
        fn = tune.with_parameters(direct_trial, spec=spec, train_data=train_data,
                                  val_data=val_data)
        return tune.with_resources(fn, resources)
    fn = tune.with_parameters(distributed_trial, spec=spec)
    return tune.with_resources(fn, {"cpu": 0, "memory": DRIVER_MEMORY})

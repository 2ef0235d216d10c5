"""train_loop_per_worker: the only place that talks to ray.train.

Ray owns the process group (gloo on CPU, nccl on GPU); this function reads its rank, restores
the latest checkpoint (after a worker failure Ray restarts the group and get_checkpoint() returns
the last one reported), and runs the Ray-free loop. The loop reports to Ray at checkpoints only
(every rank, the same steps); rank 0 logs to MLflow through a background writer and posts
progress to the driver's board.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import shutil
import tempfile

import ray.train
import ray.train.torch
import torch

from pipeline import checkpoint as ckpt
from pipeline import faults, schema, tracking
from pipeline.config import Config
from pipeline.loop import Context, fit
from pipeline.progress import Poster
from pipeline.tracking import RunLogger

FAULT_TAG = schema.FAULT_FIRED          # set on the run when an injected fault fires
RESUMED_TAG = schema.RESUMED_FROM_STEP  # the checkpoint step the latest worker group began at


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = Config.from_dict(loop_config["config"])
    tracking.set_outage_budget(cfg.train.tracking_outage_s)
    context = ray.train.get_context()
    ctx = Context(rank=context.get_world_rank(), world=context.get_world_size(),
                  device=ray.train.torch.get_device(), run_id=loop_config["run_id"],
                  tracking_uri=loop_config["tracking_uri"])
    start = None
    restored = ray.train.get_checkpoint()
    if restored is not None:  # a restart after a worker failure: this run's latest
        with restored.as_directory() as directory:
            start = ckpt.load(directory)
    elif loop_config.get("resume_from"):  # --resume: the interrupted run's last checkpoint
        start = ckpt.load(loop_config["resume_from"])

    def report_for(logger: RunLogger | None):
        def report(metrics: dict, checkpoint_dir: str | None) -> None:
            if checkpoint_dir is None:
                ray.train.report(metrics)
                return
            # Ray copies the checkpoint into storage on its upload thread (ASYNC) and deletes
            # this process's copy afterwards, so the loop goes on at once; on that thread the
            # MLflow writer is flushed first: Ray registers a checkpoint only after every point
            # up to its step is stored, so a restart from it is exactly-once.
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(
                                 take_over(checkpoint_dir)),
                             checkpoint_dir_name=checkpoint_name(metrics["step"]),
                             checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                             delete_local_checkpoint_after_upload=True,
                             checkpoint_upload_fn=flushed_upload(logger))
        return report

    run_rank(cfg, ctx, loop_config, start, report_for,
             fault=armed_fault(loop_config.get("fault"), ctx))


def checkpoint_name(step) -> str:
    return f"checkpoint_{int(step):09d}"


def run_rank(cfg: Config, ctx: Context, loop_config: dict, start: dict | None, report_for,
             fault: faults.Fault | None = None, freeze: bool = True) -> dict:
    """One rank of a run, wherever its process came from (a Ray Train worker, or a warm slot:
    pipeline/warm.py): MLflow logger and progress on rank 0, then the Ray-free loop.
    report_for(logger) gives fit() its report function; returns fit()'s last metrics.
    freeze: hide what start-up made from the garbage collector (a warm slot did it once)."""
    # Ray sets OMP_NUM_THREADS=1 in workers; give torch the CPUs this worker was granted.
    torch.set_num_threads(max(1, cfg.train.cpus_per_worker or 1))
    logger = None
    if ctx.rank == 0:
        # Any group may repeat steps an earlier one logged: one restarted from a checkpoint
        # repeats those after it, and one restarted before the first checkpoint starts again
        # at step 0. The logger reads the run's points once, before its first write.
        logger = RunLogger(ctx.run_id, ctx.tracking_uri, restarted=True)
        if start is not None:
            tracking.set_tags(ctx.run_id, {RESUMED_TAG: start["step"]}, ctx.tracking_uri)
    tag_placement(ctx)
    board = loop_config.get("progress_board")
    post = Poster(board) if board is not None and ctx.rank == 0 else None
    if freeze:
        freeze_start_up()
    try:
        metrics = fit(cfg, ctx, report_for(logger), start=start, logger=logger, progress=post,
                      fault=fault, min_checkpoint_interval_s=cfg.train.checkpoint_min_interval_s)
    except BaseException:
        if logger is not None:
            with contextlib.suppress(Exception):  # the loop's error is the one to see
                logger.close()
        raise
    if post is not None:
        post.close()
    if logger is not None:
        logger.close()
    return metrics


def freeze_start_up() -> None:
    """The ~600k objects of Ray, torch and MLflow that start-up made live as long as the process:
    out of the collector's sight, a full collection during training (it holds the GIL, so the
    training thread waits) took 34 ms instead of 210 ms in a measured AE run."""
    gc.collect()
    gc.freeze()


def take_over(directory: str) -> str:
    """The checkpoint's files moved into a new directory of this process's own (fit() deletes
    its directory when report returns; Ray's upload thread reads and then deletes this one)."""
    owned = tempfile.mkdtemp(prefix="genbench-ckpt-")
    for name in os.listdir(directory):
        shutil.move(os.path.join(directory, name), owned)  # a rename on the same filesystem
    return owned


def flushed_upload(logger: RunLogger | None):
    """Ray's checkpoint_upload_fn (run on its upload thread): waits until the MLflow writer has
    stored every point queued so far, then publishes the checkpoint into the run's storage."""
    def upload(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
        if logger is not None:
            logger.flush()
        return publish(checkpoint, dir_name)
    return upload


def publish(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
    """Copy the checkpoint into storage so that its directory appears complete or not at all.
    Ray copies straight into the final directory, and a kill mid-copy leaves a torn checkpoint
    that looks like the newest. On a local or NFS store the copy goes to a hidden staging
    directory (no `checkpoint_*` glob matches it) that is then renamed; on an object store
    each file is one object, which appears only once its upload is complete."""
    import pyarrow.fs

    storage = ray.train.get_context().get_storage()
    fs = storage.storage_filesystem
    if not isinstance(fs, pyarrow.fs.LocalFileSystem):
        return storage.persist_current_checkpoint(checkpoint, dir_name)
    staged = storage.persist_current_checkpoint(checkpoint, f".{dir_name}.partial")
    final = storage.build_checkpoint_path_from_name(dir_name)
    fs.move(staged.path, final)  # rename(2): atomic on one filesystem
    return ray.train.Checkpoint(filesystem=fs, path=final)


def armed_fault(text: str | None, ctx: Context) -> faults.Fault | None:
    """The injected fault (GENBENCH_FAULT, read by the driver) if it is this rank's and has not
    fired in this run yet: firing tags the MLflow run first, so a restarted group goes on."""
    fault = faults.parse(text)
    if fault is None or fault.rank != ctx.rank:
        return None
    if not ctx.run_id:
        return fault
    if FAULT_TAG in tracking.run_tags(ctx.run_id, ctx.tracking_uri):
        return None

    def prepare() -> None:
        wait_until_reports_collected()
        tracking.set_tags(ctx.run_id, {FAULT_TAG: text}, ctx.tracking_uri)

    return dataclasses.replace(fault, prepare=prepare)


def wait_until_reports_collected(timeout: float = 30.0) -> None:
    """Wait until Ray Train's controller has registered every rank's reports so far (it polls
    every half second, and rank 0 uploads checkpoints on a thread of its own). A fault fired
    before that would lose the checkpoint just reported, and where the restarted group resumes
    would depend on timing."""
    # On timeout it returns all the same; the fault fires and the test says what went wrong.
    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=timeout)


def tag_placement(ctx: Context) -> None:
    """Rank 0 tags the run with the Ray node of every rank (`genbench.node.rank<r>`): shows how a
    multi-node run was placed. One all_gather of a short string; after a restart the tags show
    the latest placement."""
    node_id = ray.get_runtime_context().get_node_id()
    nodes = [node_id]
    if ctx.world > 1 and torch.distributed.is_initialized():
        nodes = [None] * ctx.world
        torch.distributed.all_gather_object(nodes, node_id)
    if ctx.rank == 0 and ctx.run_id:
        tracking.set_tags(ctx.run_id, {schema.node_tag(r): n for r, n in enumerate(nodes)},
                          ctx.tracking_uri)

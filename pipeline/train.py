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
import time

import ray.train
import ray.train.torch
import torch

from pipeline import checkpoint as ckpt
from pipeline import faults, tracking
from pipeline.config import Config
from pipeline.loop import Context, fit
from pipeline.progress import poster
from pipeline.tracking import RunLogger

FAULT_TAG = "genbench.fault_fired"          # set on the run when an injected fault fires
RESUMED_TAG = "genbench.resumed_from_step"  # the checkpoint step the latest worker group began at


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = Config.from_dict(loop_config["config"])
    context = ray.train.get_context()
    # Ray sets OMP_NUM_THREADS=1 in workers; give torch the CPUs this worker was granted.
    torch.set_num_threads(max(1, cfg.train.cpus_per_worker or 1))
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
    logger = None
    if ctx.rank == 0:
        # A group that starts from a checkpoint repeats steps the last one may have logged.
        logger = RunLogger(ctx.run_id, ctx.tracking_uri, restarted=start is not None)
        if start is not None:
            tracking.set_tags(ctx.run_id, {RESUMED_TAG: start["step"]}, ctx.tracking_uri)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        step = int(metrics["step"])
        checkpoint = (ray.train.Checkpoint.from_directory(checkpoint_dir)
                      if checkpoint_dir else None)
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=f"checkpoint_{step:09d}" if checkpoint_dir else None)

    tag_placement(ctx)
    board = loop_config.get("progress_board")
    # The ~600k objects of Ray, torch and MLflow that start-up made live as long as the worker:
    # out of the collector's sight, a full collection during training (it holds the GIL, so the
    # training thread waits) took 34 ms instead of 210 ms in a measured AE run.
    gc.collect()
    gc.freeze()
    try:
        fit(cfg, ctx, report, start=start, logger=logger,
            progress=poster(board) if board is not None and ctx.rank == 0 else None,
            fault=armed_fault(loop_config.get("fault"), ctx))
    except BaseException:
        if logger is not None:
            with contextlib.suppress(Exception):  # the loop's error is the one to see
                logger.close()
        raise
    if logger is not None:
        logger.close()


def armed_fault(text: str | None, ctx: Context) -> faults.Fault | None:
    """The injected fault (GENBENCH_FAULT, read by the driver) if it is this rank's and has not
    fired in this run yet: firing tags the MLflow run first, so a restarted group goes on."""
    fault = faults.parse(text)
    if fault is None or fault.rank != ctx.rank:
        return None
    if not ctx.run_id:
        return fault
    if FAULT_TAG in tracking.client(ctx.tracking_uri).get_run(ctx.run_id).data.tags:
        return None

    def prepare() -> None:
        wait_until_reports_collected()
        tracking.set_tags(ctx.run_id, {FAULT_TAG: text}, ctx.tracking_uri)

    return dataclasses.replace(fault, prepare=prepare)


def wait_until_reports_collected(timeout: float = 30.0) -> None:
    """Wait until Ray Train's controller has taken this worker's last report (it polls every
    few seconds). A fault fired before that would lose the checkpoint just reported, and where
    the restarted group resumes would depend on timing."""
    from ray.train.v2._internal.execution.context import get_train_context  # no public API

    queue = get_train_context().get_result_queue()
    deadline = time.monotonic() + timeout
    while not queue.empty() and time.monotonic() < deadline:
        time.sleep(0.05)


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
        tracking.set_tags(ctx.run_id, {f"genbench.node.rank{r}": n for r, n in enumerate(nodes)},
                          ctx.tracking_uri)

"""Warm training slots: `genbench bench` runs its single-worker training runs in long-lived Ray
actors that have already imported torch, MLflow and the training loop, instead of a fresh Ray
Train controller and worker group per run (~20 CPU-seconds of process start-up and imports each
on 2 cores, before the first step).

A warm run is the same run: the same loop (pipeline/train.py run_rank, as rank 0 of 1), the same
MLflow record (one point per logged step, the run's tags), and checkpoints in the same place and
layout as Ray Train's (<storage>/<name>/checkpoint_<step>, each published by a rename, the
newest `keep` kept), so `--resume`, `genbench eval` and the report read it as any other run.

What Ray Train adds is recovery: if a slot fails (its process dies, or the loop raises), the run
goes on under Ray Train from its newest checkpoint that loads (or from the start), with its
usual max_failures, and the slot is replaced. While a slot trains it holds its CPUs in a
placement group, so Ray's accounting (a sweep or a multi-worker run beside it) stays true.

Only where that is all local: CPU runs with one worker, checkpoints on a local path, on a Ray
that this process started; elsewhere (GPUs, a cluster, an object store) runs use Ray Train.
GENBENCH_WARM_SLOTS=0 turns slots off (benchmarks/bench_record.py compares).
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from pipeline import checkpoint as ckpt
from pipeline import storage

ENV = "GENBENCH_WARM_SLOTS"


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def runs_warm(cfg, fault: str | None) -> bool:
    """Whether this run can train in a warm slot (the module's docstring says why only these)."""
    from pipeline.cluster import started_ray_here

    t = cfg.train
    return (enabled() and t.workers == 1 and not t.gpu and not fault
            and not storage.is_uri(t.storage_path or "") and started_ray_here())


class TrainingSlot:
    """The actor: one process that trains runs one after another."""

    def __init__(self, config: dict | None = None, tracking_uri: str | None = None):
        """config: a run's config dict whose dataset the runs will read: read it now;
        tracking_uri: the MLflow store the runs log to: open it now (~1 s the first time)."""
        from pipeline.train import freeze_start_up  # torch, Ray, MLflow and the loop, once

        if config is not None:  # the files' bytes stay in this process (pipeline/data.py)
            from pipeline.config import Config
            from pipeline.data import load_config_split

            load_config_split(Config.from_dict(config).data, "train")
        if tracking_uri is not None:
            from pipeline import tracking

            try:
                tracking.client(tracking_uri).search_experiments(max_results=1)
            except Exception:  # only a head start: the run meets (and reports) any problem
                pass
        freeze_start_up()  # once: each run's own objects stay collectable

    def pid(self) -> int:
        return os.getpid()

    def run(self, loop_config: dict, run_dir: str, keep: int | None) -> dict:
        return run_warm(loop_config, run_dir, keep)


def run_warm(loop_config: dict, run_dir: str, keep: int | None) -> dict:
    """One run as rank 0 of 1 in this process: its last reported metrics and checkpoint."""
    import torch

    from pipeline import tracking
    from pipeline.config import Config
    from pipeline.loop import Context
    from pipeline.train import checkpoint_name, run_rank

    cfg = Config.from_dict(loop_config["config"])
    tracking.set_outage_budget(cfg.train.tracking_outage_s)
    ctx = Context(rank=0, world=1, device=torch.device("cpu"), run_id=loop_config["run_id"],
                  tracking_uri=loop_config["tracking_uri"])
    start = ckpt.load(loop_config["resume_from"]) if loop_config.get("resume_from") else None
    last: dict = {"metrics": {}, "checkpoint": None}

    def report_for(logger):
        def report(metrics: dict, checkpoint_dir: str | None) -> None:
            last["metrics"] = dict(metrics)
            if checkpoint_dir is None:
                return
            if logger is not None:  # every point up to this step stored first: exactly-once
                logger.flush()
            last["checkpoint"] = publish(checkpoint_dir, run_dir,
                                         checkpoint_name(metrics["step"]), keep)
        return report

    run_rank(cfg, ctx, loop_config, start, report_for, freeze=False)
    return last


def publish(source: str, run_dir: str, name: str, keep: int | None) -> str:
    """Copy a checkpoint into the run's directory so that it appears complete or not at all (a
    hidden staging directory, then rename(2)), and delete all but the newest `keep`."""
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    staged, final = root / f".{name}.partial", root / name
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(source, staged)
    if final.exists():  # the same step again (a run resumed from before it): the newer copy
        shutil.rmtree(final)
    os.rename(staged, final)
    if keep:
        for old in sorted(root.glob("checkpoint_*"), reverse=True)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    return str(final)


class SlotPool:
    """`size` warm slots (each trains one run at a time, with `cpus` CPUs held while it does).
    The actors start at once, in the background: their imports overlap the bench's first work."""

    def __init__(self, size: int, cpus: int, config=None, tracking_uri: str | None = None):
        """config: a Config whose dataset the runs train on, tracking_uri their MLflow store
        (each slot reads the one and opens the other as it starts)."""
        self.cpus, self.config = cpus, config.to_dict() if config is not None else None
        self.tracking_uri = tracking_uri
        self._free: list = []
        self._started: list = []   # each slot's pid() call: done when its imports are
        self._lock = threading.Condition()
        self._starting = threading.Lock()
        for _ in range(size):
            self._free.append(self._new())

    def _new(self):
        import ray

        # num_cpus=0: the slot holds its CPUs only while it trains (a placement group), so an
        # idle slot never keeps a sweep or a multi-worker run from starting
        slot = ray.remote(TrainingSlot).options(num_cpus=0, max_restarts=0).remote(
            self.config, self.tracking_uri)
        self._started.append(slot.pid.remote())
        return slot

    def wait_until_started(self) -> None:
        """Until every slot has imported what it trains with (at once after the first time):
        a run's clock (its MLflow start) starts after this, as a Ray Train run's starts before
        Ray Train does."""
        import ray

        with self._starting:
            pending, self._started = self._started, []
            for ref in pending:
                try:
                    ray.get(ref)
                except ray.exceptions.RayError:
                    pass  # a slot that could not start: its first run goes to Ray Train

    def acquire(self):
        with self._lock:
            while not self._free:
                self._lock.wait()
            return self._free.pop(0)

    def release(self, slot, broken: bool = False) -> None:
        """Back into the pool; a broken slot is killed and replaced by a fresh one."""
        import ray

        if broken:
            ray.kill(slot, no_restart=True)
            slot = self._new()
        with self._lock:
            self._free.append(slot)
            self._lock.notify()

    def close(self) -> None:
        import ray

        with self._lock:
            for slot in self._free:
                ray.kill(slot, no_restart=True)
            self._free.clear()


@dataclass
class _Checkpoint:
    path: str | None


@dataclass
class WarmResult:
    """The parts of Ray Train's Result that pipeline/launch.py reads."""
    metrics: dict
    checkpoint: _Checkpoint | None


class WarmTrainer:
    """fit() like a TorchTrainer's: the run in a warm slot, or under Ray Train after a failure.
    checkpoint_dir: where this run's checkpoints go (<storage>/<name>); run_glob: the prefix of
    every directory of the run (its first, and those of resumes: pipeline/trainer.py);
    fallback(resume_from) makes the TorchTrainer (a checkpoint path, or None: from the start)."""

    def __init__(self, pool: SlotPool, loop_config: dict, checkpoint_dir: str, run_glob: str,
                 keep: int | None, fallback):
        self.pool, self.loop_config, self.keep = pool, loop_config, keep
        self.checkpoint_dir, self.run_glob, self.fallback = checkpoint_dir, run_glob, fallback
        self.slot, self.stopped = None, False

    def fit(self):
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        slot = self.pool.acquire()
        held = placement_group([{"CPU": self.pool.cpus}])
        failure = None
        try:
            ray.get(held.ready())
            self.slot = slot
            out = ray.get(slot.run.remote(self.loop_config, self.checkpoint_dir, self.keep))
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            failure = exc
        finally:
            self.slot = None
            remove_placement_group(held)   # before a fallback asks Ray for these CPUs
        self.pool.release(slot, broken=failure is not None)
        if failure is not None:
            if self.stopped:
                raise failure
            return self._recover(failure)
        checkpoint = _Checkpoint(out["checkpoint"]) if out["checkpoint"] else None
        return WarmResult(out["metrics"], checkpoint)

    def _recover(self, exc: Exception):
        from pipeline.trainer import newest_loadable_checkpoint

        path, _, _ = newest_loadable_checkpoint(self.run_glob)
        start = str(path) if path else self.loop_config.get("resume_from")
        lines = str(exc).strip().splitlines()
        why = lines[-1][:200] if lines else type(exc).__name__
        print(f"genbench: the warm slot failed ({why}); the run goes on under Ray Train from "
              f"{Path(start).name if start else 'its first step'}", file=sys.stderr, flush=True)
        return self.fallback(start).fit()

    def stop(self) -> None:
        """Ctrl-C or SIGTERM in the driver: end the run where it trains, with no fallback."""
        import ray

        self.stopped = True
        if self.slot is not None:
            ray.kill(self.slot, no_restart=True)

"""The TorchTrainer of one run (`genbench train`, or a multi-worker trial of a sweep) and where
its checkpoints live."""
from __future__ import annotations

import glob
import os
from pathlib import Path

from pipeline import checkpoint as ckpt
from pipeline import storage
from pipeline.config import Config
from pipeline.errors import ConfigError

# How often Ray Train's controller polls its workers (Ray's default: 2 s). A worker's reports
# wait in a queue of one that only a poll empties, so a checkpoint reported less than a poll
# after the previous one waits for the next poll: up to 2 s per checkpoint for a run that
# checkpoints every second (on the training thread in a sweep's multi-worker trials; on Ray's
# upload thread in genbench train, where later checkpoints queue behind it). Every 0.5 s bounds
# that wait; a poll costs the workers well under a millisecond. Ray passes it from the process
# that calls fit() to the run's controller.
POLL_INTERVAL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
STALL_TIMEOUT_ENV = "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S"  # read by the run's controller
STALL_TIMEOUT_SET_BY_USER = STALL_TIMEOUT_ENV in os.environ


def make_trainer(loop_fn, loop_config: dict, cfg: Config, name: str, storage: str,
                 keep_checkpoints: int, callbacks=()):
    """The TorchTrainer of one run (genbench train, or a multi-worker trial): cfg.train.workers
    DDP workers with their resources, restarts after failures, the checkpoints to keep.
    A run that continues an earlier one passes the checkpoint path in loop_config (Ray Train V2
    has no resume_from_checkpoint): the workers load it when Ray hands them none."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from pipeline.cluster import torch_config

    os.environ.setdefault(*POLL_INTERVAL)
    t = cfg.train
    # A stalled rank (a hung GPU, a SIGSTOPped or swapped-out process) holds every other rank in
    # its next collective: after collective_timeout_s the others' collective fails (Ray's
    # default is 30 min), and the controller, which stops waiting for a silent worker after as
    # long (Ray's default 10 min), restarts the group from the last checkpoint.
    if not STALL_TIMEOUT_SET_BY_USER:
        os.environ[STALL_TIMEOUT_ENV] = str(t.collective_timeout_s)
    return lean_trainer_class()(
        loop_fn, train_loop_config=loop_config,
        torch_config=torch_config(max(1, int(t.collective_timeout_s))),
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints)))


def storage_path(cfg: Config) -> str:
    return cfg.train.storage_path or str(Path("ray_results").absolute())


def list_checkpoints(run_dir_glob: str) -> list[Path] | list[str]:
    """Every checkpoint_<step> holding a checkpoint file under this run's Ray directories, newest
    first: Paths on local storage, URIs on a store given as one (s3://..., read through
    pyarrow.fs: pipeline/storage.py). Whether each one loads is the caller's question."""
    if storage.is_uri(run_dir_glob):
        try:
            return storage.list_checkpoints(run_dir_glob, ckpt.FILENAME)
        except storage.StoreError as exc:
            raise ConfigError(f"{exc}; check the storage credentials and endpoint (AWS_* or "
                              f"GOOGLE_APPLICATION_CREDENTIALS in the environment)") from None
    found = [Path(p) for p in glob.glob(f"{glob.escape(run_dir_glob)}*/checkpoint_*")]
    return sorted((p for p in found if (p / ckpt.FILENAME).is_file()),
                  key=lambda p: p.name, reverse=True)


def newest_loadable_checkpoint(run_dir_glob: str
                               ) -> tuple[Path | str | None, dict | None, list[str]]:
    """The newest checkpoint that loads, its payload, and the names of the newer ones skipped
    because they do not (torn by a kill while Ray copied them, truncated). A checkpoint that
    loads but is refused for another reason (another format, not genbench's) is an error."""
    skipped = []
    for path in list_checkpoints(run_dir_glob):
        try:
            return path, ckpt.load(path), skipped
        except ckpt.CorruptCheckpoint:
            skipped.append(storage.name(path))
    return None, None, skipped


def find_latest_checkpoint(run_dir_glob: str) -> Path | str | None:
    """The newest checkpoint_<step> under this run's Ray directories."""
    found = list_checkpoints(run_dir_glob)
    return found[0] if found else None


# Ray Train V2 helpers a genbench run does not use, by class name (internal to Ray): the Ray
# Dataset manager (genbench passes no Ray Datasets) and, on a Ray that this process started,
# the detached placement-group cleaner (when this driver ends, its Ray ends with it). Each is
# one more Python process per run, ~2-3 CPU-seconds to start, and the cleaner's start is on
# the path to the first step.
UNUSED_ALWAYS = ("DatasetsCallback",)
UNUSED_ON_OWN_RAY = ("PlacementGroupCleanerCallback",)


def lean_trainer_class():
    """TorchTrainer without the helper actors listed above (through pipeline/ray_private.py;
    where a Ray release does not allow it, the plain TorchTrainer)."""
    from ray.train.torch import TorchTrainer

    from pipeline.cluster import started_ray_here
    from pipeline.ray_private import trainer_without_callbacks

    def unused(trainer) -> tuple[str, ...]:
        names = UNUSED_ALWAYS if not trainer.datasets else ()
        return names + UNUSED_ON_OWN_RAY if started_ray_here() else names

    return trainer_without_callbacks(TorchTrainer, unused)

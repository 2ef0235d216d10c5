"""The TorchTrainer of one run (`genbench train`, or a multi-worker trial of a sweep) and where
its checkpoints live."""
from __future__ import annotations

from pathlib import Path

from pipeline import checkpoint as ckpt
from pipeline.config import Config


def make_trainer(loop_fn, loop_config: dict, cfg: Config, name: str, storage: str,
                 keep_checkpoints: int, callbacks=()):
    """The TorchTrainer of one run (genbench train, or a multi-worker trial): cfg.train.workers
    DDP workers with their resources, restarts after failures, the checkpoints to keep.
    A run that continues an earlier one passes the checkpoint path in loop_config (Ray Train V2
    has no resume_from_checkpoint): the workers load it when Ray hands them none."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = cfg.train
    return TorchTrainer(
        loop_fn, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints)))


def storage_path(cfg: Config) -> str:
    return cfg.train.storage_path or str(Path("ray_results").absolute())


def find_latest_checkpoint(run_dir_glob: str) -> Path | None:
    """The newest checkpoint_<step> under this run's Ray directories (local storage)."""
    found = sorted(Path(p) for p in __import__("glob").glob(f"{run_dir_glob}*/checkpoint_*"))
    found = [p for p in found if (p / ckpt.FILENAME).is_file()]
    return max(found, key=lambda p: p.name) if found else None

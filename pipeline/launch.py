"""Driver side of `genbench train`: validate, open the MLflow run, fit a TorchTrainer, close.

Everything that can be checked before Ray starts is checked first (config, data, checkpoint),
so bad input costs a second and leaves nothing behind.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import checkpoint as ckpt
from pipeline import faults, tracking
from pipeline.config import Config
from pipeline.data import load_config_split, load_split
from pipeline.errors import ConfigError, RunStopped
from pipeline.models import FAMILIES

RUN_DIR_TAG = "genbench.ray_run_dir"


@dataclass
class TrainResult:
    run_id: str
    experiment: str
    steps: int
    metrics: dict
    seconds: float
    checkpoint: str | None


def check_ray_address(address: str | None = None, timeout: float = 5.0, tries: int = 2) -> None:
    """A one-line ConfigError when --address / RAY_ADDRESS names a cluster that does not accept
    a connection: ray.init would otherwise wait for its GCS for minutes. Each try waits at most
    `timeout` s. No address (or "local") starts a local Ray: nothing to check."""
    import socket

    given = address or os.environ.get("RAY_ADDRESS")
    if not given or given == "local":
        return
    target = given
    if given == "auto":  # the cluster `ray start` left on this machine, if any
        from ray._private.services import canonicalize_bootstrap_address
        try:
            target = canonicalize_bootstrap_address("auto", None)
        except ConnectionError:
            raise ConfigError("no running Ray cluster on this machine for address 'auto'; "
                              "start one (ray start --head) or drop --address / RAY_ADDRESS "
                              "to use a local Ray") from None
        if not target:
            return
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {given!r} is not HOST:PORT (or ray://HOST:PORT, auto); "
                          f"fix --address / RAY_ADDRESS")
    reason = None
    for attempt in range(tries):
        if attempt:
            time.sleep(1.0)
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
            return
        except socket.timeout:
            reason = f"no answer within {timeout:.0f} s"
        except OSError as exc:
            reason = exc.strerror.lower() if exc.strerror else type(exc).__name__
    raise ConfigError(f"cannot reach the Ray cluster at {given} ({reason}, {tries} tries); "
                      f"start it (ray start --head --port {port}) or fix --address / "
                      f"RAY_ADDRESS (none: a local Ray)")


def init_ray(address: str | None = None, verbose: bool = False) -> None:
    """Connect to RAY_ADDRESS / --address, or start a quiet local instance."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    quiet = not verbose
    if quiet:  # before init: Ray warns at start-up (e.g. about token authentication)
        for name in ("ray", "ray.train", "ray.tune", "ray.data", "mlflow"):
            logging.getLogger(name).setLevel(logging.ERROR)
    kwargs = dict(address=address or os.environ.get("RAY_ADDRESS"), log_to_driver=not quiet,
                  logging_level=logging.ERROR if quiet else logging.INFO,
                  include_dashboard=False if not (address or os.environ.get("RAY_ADDRESS"))
                  else None)
    if kwargs["include_dashboard"] is None:
        del kwargs["include_dashboard"]
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        hint = ("" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its "
                "token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)")
        raise ConfigError(f"cannot reach the Ray cluster at {kwargs['address']} "
                          f"({str(exc).splitlines()[0]}); check --address / RAY_ADDRESS"
                          f"{hint}") from None


def joined_cluster(address: str | None = None) -> bool:
    """True when genbench runs on a cluster it did not start: --address, RAY_ADDRESS (a `ray job
    submit` driver gets RAY_ADDRESS=auto), or a `ray start` cluster that ray.init() found on
    this machine (a shell on the head node)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return True
    from ray._private import worker  # no public API says who started the connected cluster
    node = getattr(worker, "_global_node", None)
    return node is not None and not node.is_head()


def joins_cluster(address: str | None = None) -> bool:
    """Whether init_ray(address) joins a running cluster (--address, RAY_ADDRESS, or a `ray
    start` cluster on this machine) rather than starting a local Ray. Asked before Ray starts."""
    given = address or os.environ.get("RAY_ADDRESS")
    if given:
        return given != "local"
    from ray._private.services import canonicalize_bootstrap_address  # no public API
    try:
        return canonicalize_bootstrap_address(None) is not None
    except Exception:  # a malformed leftover address file: ray.init will say so
        return False


def require_gpu(address: str | None = None, verbose: bool = False) -> None:
    """--gpu: a one-line ConfigError when no GPU is there to use: none visible to torch here
    and, when joining a cluster, none among the cluster's resources."""
    import torch

    if torch.cuda.is_available():
        return
    if not joins_cluster(address):
        raise ConfigError("--gpu asked for but this machine has no GPU (torch sees no CUDA "
                          "device); drop --gpu, or join a cluster with GPUs (--address)")
    import ray

    init_ray(address, verbose)
    if ray.cluster_resources().get("GPU", 0) < 1:
        raise ConfigError(f"--gpu asked for but neither this machine nor the Ray cluster "
                          f"({address or os.environ.get('RAY_ADDRESS') or 'found by ray.init'})"
                          f" has a GPU; drop --gpu or add GPU nodes")


def resolve_resources(cfg: Config, can_grow: bool = False) -> Config:
    """Check the request against the cluster; fill in cpus_per_worker (default: the cluster's
    CPUs split evenly over the workers, so 1 worker on 2 cores trains with 2 threads).

    On a cluster that can grow (one genbench joined: its autoscaler adds nodes, e.g. GPU
    workers scaled from 0) a shortfall is a note, not an error: the run waits for the nodes."""
    import dataclasses

    import ray

    t = cfg.train
    total = ray.cluster_resources()
    cpus = total.get("CPU", 0)
    if t.cpus_per_worker is None:
        # No worker can get more CPUs than the biggest node holds (the total spans nodes).
        biggest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")),
                      default=cpus)
        per_worker = 1 if t.gpu else max(1, min(int(cpus) // t.workers, int(biggest)))
        t = dataclasses.replace(t, cpus_per_worker=per_worker)
        cfg = dataclasses.replace(cfg, train=t)
    short = shortfall(cfg, total)
    if short and not can_grow:
        raise ConfigError(short)
    if short:
        print(f"genbench: {short.split(';')[0]} now; waiting for the autoscaler to add nodes "
              f"(Ctrl-C to stop)", file=sys.stderr, flush=True)
    return cfg


def shortfall(cfg: Config, total: dict, workers_flag: str = "--workers") -> str | None:
    """What the cluster lacks for this run and how to fix it, or None when it fits."""
    t = cfg.train
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    if t.gpu and t.workers > gpus:
        return (f"{t.workers} GPU workers asked for but the Ray cluster has {int(gpus)} GPUs; "
                f"lower {workers_flag} or add GPU nodes")
    if not t.gpu and t.workers * t.cpus_per_worker > cpus:
        return (f"{t.workers} workers x {t.cpus_per_worker} CPUs asked for but the Ray cluster "
                f"has {int(cpus)} CPUs; lower {workers_flag}")
    return None


def require_shared_storage(cfg: Config, grows: bool = False) -> None:
    """Any worker may run on another node than the driver: a cluster with several nodes, or
    one that must add nodes for this run, needs checkpoint storage all nodes reach."""
    if cfg.train.storage_path is None and (grows or _multi_node()):
        raise ConfigError("this Ray cluster has (or is adding) several nodes: checkpoints need "
                          "shared storage; pass --storage-path s3://bucket/path or an NFS "
                          "directory")


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


def prepare_resume(run_id: str) -> tuple[Config, dict, Path]:
    """Config, checkpoint payload and path of an interrupted run, or a one-line error."""
    run = tracking.get_run(run_id)
    run_dir = run.data.tags.get(RUN_DIR_TAG)
    if not run_dir:
        raise ConfigError(f"MLflow run {run_id} was not made by genbench train; "
                          f"nothing to resume")
    latest = find_latest_checkpoint(run_dir)
    if latest is None:
        raise ConfigError(f"run {run_id} has no checkpoint under {run_dir}; "
                          f"start it again without --resume")
    payload = ckpt.load(latest)
    if payload.get("mlflow_run_id") != run_id:
        raise ConfigError(f"checkpoint {latest} belongs to run {payload.get('mlflow_run_id')}, "
                          f"not {run_id}; resume that run instead")
    cfg = Config.from_dict(payload["config"])
    return cfg, payload, latest


def _validate_checkpoint_shapes(cfg: Config, payload: dict, source: str) -> None:
    """Build the nets on CPU and load the checkpoint: a mismatch fails here, not in a worker."""
    import torch

    from pipeline.loop import build_nets
    data = load_split(cfg.data.dataset, "val", cfg.data.root, max(cfg.data.val_fraction, 0.01),
                      cfg.data.split_seed, cfg.data.image_size)
    nets, opts = build_nets(cfg, data, torch.device("cpu"), 1)
    ckpt.restore(payload, nets, opts, source=source)




def train(cfg: Config, experiment: str = "genbench", address: str | None = None,
          resume: str | None = None, verbose: bool = False, quiet: bool = False,
          extra_tags: dict | None = None) -> TrainResult:
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
        _validate_checkpoint_shapes(cfg, start_payload, f"checkpoint {latest}")
    # Data first: a missing dataset is a one-line error before Ray starts.
    train_data, _ = load_train_split(cfg, with_val=False)
    steps = total_steps(cfg, len(train_data) // cfg.train.batch_size)
    if resume and start_payload["step"] >= steps:
        raise ConfigError(f"run {resume} already reached step {start_payload['step']} "
                          f"of {steps}; nothing to resume")
    init_ray(address, verbose)
    joined = joined_cluster(address)
    cfg = resolve_resources(cfg, can_grow=joined)
    require_shared_storage(cfg, grows=joined and shortfall(cfg, ray.cluster_resources())
                           is not None)

    if resume:
        run_id = resume
        run_dir = tracking.get_run(run_id).data.tags[RUN_DIR_TAG]
        attempt = len(__import__("glob").glob(f"{run_dir}*")) + 1
        name = f"{Path(run_dir).name}-resume{attempt}"
        tracking.client().update_run(run_id, status="RUNNING")
        # Ray Train V2 dropped resume_from_checkpoint: the workers load this path themselves.
        resume_from = str(latest)
    else:
        tags = tracking.versions_and_hardware(cfg.train.gpu)
        tags.update({"genbench.model": cfg.model, "genbench.dataset": cfg.data.dataset,
                     "genbench.kind": "train", **(extra_tags or {})})
        run_id = tracking.start_run(experiment,
                                    f"{cfg.model}-{cfg.data.dataset}-seed{cfg.train.seed}",
                                    {**cfg.flat(), "train.total_steps": steps}, tags)
        name = f"genbench-{cfg.model}-{run_id[:12]}"
        run_dir = f"{storage_path(cfg)}/{name}"
        tracking.set_tags(run_id, {RUN_DIR_TAG: run_dir})
        resume_from = None

    progress = None if quiet else ProgressPrinter(steps, FAMILIES[cfg.model].PROGRESS_KEYS)
    trainer = make_trainer(
        train_loop_per_worker,
        {"config": cfg.to_dict(), "run_id": run_id, "tracking_uri": tracking.tracking_uri(),
         "resume_from": resume_from, "progress_board": progress.board if progress else None,
         "fault": fault},
        cfg, name, storage_path(cfg), cfg.train.keep_checkpoints)
    if not quiet:
        print(f"genbench: training {cfg.model} on {cfg.data.dataset} with "
              f"{cfg.train.workers} worker(s), {steps} steps; MLflow run {run_id} (if it "
              f"stops: genbench train --resume {run_id})", file=sys.stderr, flush=True)
    if progress:
        progress.start()
    t0 = time.time()
    try:
        result = fit_interruptibly(trainer)
    except KeyboardInterrupt:
        _close_quietly(run_id, "KILLED")
        raise RunStopped(f"interrupted; {resume_hint(run_id, run_dir)}", 130) from None
    except Exception:
        lost = tracking.unreachable(tracking.tracking_uri())
        _close_quietly(run_id, "FAILED")
        if lost:
            raise RunStopped(f"lost the MLflow tracking server at {tracking.tracking_uri()} "
                             f"({lost}); when it is back, "
                             f"{resume_hint(run_id, run_dir)}") from None
        print(f"genbench: training failed; {resume_hint(run_id, run_dir)}", file=sys.stderr)
        raise
    finally:
        if progress:
            progress.stop()
    seconds = time.time() - t0
    tracking.end_run(run_id, "FINISHED")
    checkpoint = result.checkpoint.path if result.checkpoint else None
    return TrainResult(run_id, experiment, steps, dict(result.metrics or {}), seconds, checkpoint)


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


def resume_hint(run_id: str, run_dir: str) -> str:
    """How to continue a stopped run: from its newest checkpoint, or from scratch if none."""
    if "://" not in run_dir:  # local storage: say which step the checkpoint holds
        latest = find_latest_checkpoint(run_dir)
        if latest is None:
            return "it stopped before its first checkpoint: start it again"
        step = int(latest.name.rsplit("_", 1)[-1])
        return f"its checkpoint of step {step} is kept: genbench train --resume {run_id}"
    return f"continue from its last checkpoint: genbench train --resume {run_id}"


def _close_quietly(run_id: str, status: str) -> None:
    """Mark the MLflow run stopped, if the tracking server still answers (it may be what
    failed); --resume reopens it either way."""
    try:
        tracking.end_run(run_id, status)
    except Exception:
        pass


def _multi_node() -> bool:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")) > 1

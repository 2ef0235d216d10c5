"""The Ray cluster a run goes to: connect (or start a quiet local Ray; pipeline/services.py
checks the address first) and fit the run's workers to the cluster's resources, with a one-line
error when they cannot fit. Used by `genbench train` (launch.py), sweeps (tune/) and `genbench eval --workers`."""
from __future__ import annotations

import logging
import os
import sys

from pipeline.config import Config
from pipeline.errors import ConfigError

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # read by the controller it starts


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
    if not joins_cluster(address):
        # A local Ray that genbench starts: the training workers are the work. At Ray's default
        # nice 15 every housekeeping process of Ray's preempts them, and a torch thread team
        # that loses a core for a moment stalls the whole step.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # With no dashboard nothing reads Ray's per-task events or its metrics, and every Ray
        # process reports them every second or so: CPU taken from the training on a small
        # machine (measured: ~1% of 2 cores during an AE run).
        for name in ("RAY_task_events_report_interval_ms", "RAY_enable_metrics_collection"):
            os.environ.setdefault(name, "0")
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        hint = ("" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its "
                "token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)")
        raise ConfigError(f"cannot reach the Ray cluster at {kwargs['address']} "
                          f"({str(exc).splitlines()[0]}); check --address / RAY_ADDRESS"
                          f"{hint}") from None
    if not joined_cluster(address):
        # One machine that genbench started: no node can be preempted, so Ray Train's
        # preemption watcher (one more actor process per run, ~3 CPU-seconds to start) is off.
        os.environ.setdefault(PREEMPTION_WATCHER, "0")


def joined_cluster(address: str | None = None) -> bool:
    """True when genbench runs on a cluster it did not start: --address, RAY_ADDRESS (a `ray job
    submit` driver gets RAY_ADDRESS=auto), or a `ray start` cluster that ray.init() found on
    this machine (a shell on the head node)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return True
    from ray._private import worker  # no public API says who started the connected cluster
    node = getattr(worker, "_global_node", None)
    return node is not None and not node.is_head()


def started_ray_here() -> bool:
    """True in a driver that started the Ray it is connected to: the Ray ends with this
    process. False in a Ray worker process (a Tune trial) and on a cluster joined."""
    from ray._private import worker  # no public API says who started the connected cluster
    node = getattr(worker, "_global_node", None)
    return node is not None and node.is_head() and not os.environ.get("RAY_ADDRESS")


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
    if cfg.train.storage_path is None and (grows or multi_node()):
        raise ConfigError("this Ray cluster has (or is adding) several nodes: checkpoints need "
                          "shared storage; pass --storage-path s3://bucket/path or an NFS "
                          "directory")


def multi_node() -> bool:
    """Whether the connected Ray cluster has more than one live node."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")) > 1

"""The Ray cluster a run goes to: connect (or start a quiet local Ray; pipeline/services.py
checks the address first) and fit the run's workers to the cluster's resources, with a one-line
error when they cannot fit. Used by `genbench train` (launch.py), sweeps (tune/) and `genbench eval --workers`.

A cluster is joined only when asked for: --address or RAY_ADDRESS. Anything else starts a local
Ray for this process alone (address="local": a `ray start` cluster recorded on this machine, in
/tmp/ray/ray_current_cluster, may be someone else's), with every server on 127.0.0.1 and a token
that only this user can read (see ray_private.single_machine_mode and _private_token)."""
from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import secrets
import shutil
import sys
import tempfile

from pipeline import ray_private, reaper
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.signals import handle_sigterm

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # read by the controller it starts


def init_ray(address: str | None = None, verbose: bool = False) -> None:
    """Connect to --address / RAY_ADDRESS, or start a quiet local instance on loopback."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    quiet = not verbose
    if quiet:  # before init: Ray warns at start-up (e.g. about token authentication)
        for name in ("ray", "ray.train", "ray.tune", "ray.data", "mlflow"):
            logging.getLogger(name).setLevel(logging.ERROR)
    joins = joins_cluster(address)
    kwargs = dict(address=(address or os.environ.get("RAY_ADDRESS")) if joins else "local",
                  log_to_driver=not quiet, logging_level=logging.ERROR if quiet else logging.INFO)
    if not joins:
        kwargs["include_dashboard"] = False
        # A local Ray that genbench starts: the training workers are the work. At Ray's default
        # nice 15 every housekeeping process of Ray's preempts them, and a torch thread team
        # that loses a core for a moment stalls the whole step.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # With no dashboard nothing reads Ray's per-task events or its metrics, and every Ray
        # process reports them every second or so: CPU taken from the training on a small
        # machine (measured: ~1% of 2 cores during an AE run).
        for name in ("RAY_task_events_report_interval_ms", "RAY_enable_metrics_collection"):
            os.environ.setdefault(name, "0")
        # One machine: the ranks' gloo / NCCL connections on loopback too (by default they
        # listen on the address the host name resolves to). Ray's workers inherit these.
        loopback_interface = "lo0" if sys.platform == "darwin" else "lo"
        for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            os.environ.setdefault(name, loopback_interface)
        _private_token()
    target = kwargs["address"]
    try:
        with ray_private.single_machine_mode(
                not joins or is_loopback(target.rpartition(":")[0])):
            ray.init(**kwargs)
    except ConnectionError as exc:
        hint = ("" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its "
                "token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)")
        raise ConfigError(f"cannot reach the Ray cluster at {target} "
                          f"({str(exc).splitlines()[0]}); check --address / RAY_ADDRESS"
                          f"{hint}") from None
    handle_sigterm()  # ray.init put Ray's handler in place: a stack dump, and no cleanup
    if not joins:
        reaper.start()  # whatever of this Ray outlives the driver (a SIGKILL) is ended
        gcs = ray.get_runtime_context().gcs_address
        if not is_loopback(gcs.rpartition(":")[0]):  # a Ray release without the switch
            print(f"genbench: note: this Ray release put its local servers on a network "
                  f"address ({gcs}); they admit only the token in "
                  f"{os.environ['RAY_AUTH_TOKEN_PATH']}", file=sys.stderr)
    if not joined_cluster(address):
        # One machine that genbench started: no node can be preempted, so Ray Train's
        # preemption watcher (one more actor process per run, ~3 CPU-seconds to start) is off.
        os.environ.setdefault(PREEMPTION_WATCHER, "0")


def _private_token() -> str:
    """Require token authentication on the local Ray, with a fresh token that only this user can
    read: a 0600 file in a 0700 directory, removed when this process exits. Ray 2.60 turns token
    authentication on by default, but with one token for all of a user's Rays in
    ~/.ray/auth_token, written with the process umask (world-readable at the usual 022). Loopback
    keeps the network out; the token keeps out the other users of a shared machine. Ray's own
    processes read it through RAY_AUTH_TOKEN_PATH, inherited from this process."""
    directory = tempfile.mkdtemp(prefix="genbench-ray-")  # mode 0700
    path = os.path.join(directory, "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    atexit.register(shutil.rmtree, directory, True)  # runs after Ray's node stopped its processes
    os.environ.pop("RAY_AUTH_TOKEN", None)  # the loader would take it over the file
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=path)
    ray_private.reset_auth_token_cache()  # a driver that ran a Ray before cached its token
    return path


def torch_config(timeout_s: int):
    """Ray Train's TorchConfig for a run on the connected Ray. On a local Ray (a node on
    loopback) rank 0's rendezvous store listens on 127.0.0.1 too: torch's TCPStore binds every
    interface (:: or 0.0.0.0, torch/csrc/distributed/c10d/TCPStoreLibUvBackend.cpp) unless it
    is handed a listening socket (master_listen_fd), and Ray Train's backend creates it through
    torch's tcp:// (or env://) rendezvous. Elsewhere, or where Ray's backend class moved, the
    plain TorchConfig."""
    import ray
    from ray.train.torch import TorchConfig

    if not is_loopback(ray.util.get_node_ip_address()):
        return TorchConfig(timeout_s=timeout_s)
    TorchBackend = ray_private.torch_backend_class()
    if TorchBackend is None:
        return TorchConfig(timeout_s=timeout_s)

    class LoopbackTorchBackend(TorchBackend):
        def on_start(self, worker_group, backend_config):
            worker_group.execute(_loopback_rendezvous)  # in each worker, before its rendezvous
            super().on_start(worker_group, backend_config)

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return LoopbackTorchBackend

    return LoopbackTorchConfig(init_method="tcp", timeout_s=timeout_s)


def _loopback_rendezvous() -> None:
    """In a Ray Train worker: torch's tcp:// rendezvous, except that rank 0's store listens on
    the URL's host alone when that host is a loopback address (a socket bound there, handed to
    TCPStore as master_listen_fd). torch keeps its handlers in rendezvous._rendezvous_handlers;
    where that is gone, torch's own handler stays."""
    import importlib
    import socket
    from urllib.parse import parse_qsl, urlparse

    from torch.distributed import TCPStore

    # The module (torch.distributed.rendezvous, the name, is its function of the same name).
    rdzv = importlib.import_module("torch.distributed.rendezvous")

    handlers = getattr(rdzv, "_rendezvous_handlers", None)
    if not isinstance(handlers, dict) or getattr(handlers.get("tcp"), "loopback", False):
        return
    torch_handler = handlers["tcp"]

    def loopback_handler(url, timeout=rdzv.default_pg_timeout, **kwargs):
        parsed = urlparse(url)
        query = dict(parse_qsl(parsed.query))
        if not is_loopback(parsed.hostname or "") or not {"rank", "world_size"} <= set(query):
            yield from torch_handler(url, timeout=timeout, **kwargs)
            return
        rank, world_size = int(query["rank"]), int(query["world_size"])
        listen_fd = socket.create_server((parsed.hostname, parsed.port)).detach() \
            if rank == 0 else None
        store = TCPStore(parsed.hostname, parsed.port, world_size, rank == 0, timeout=timeout,
                         multi_tenant=True, master_listen_fd=listen_fd)
        yield store, rank, world_size
        raise RuntimeError("Unable to perform re-rendezvous using tcp:// method")  # as torch's

    loopback_handler.loopback = True
    handlers["tcp"] = loopback_handler


def is_loopback(host: str) -> bool:
    """Whether an IP address is a loopback one: 127.0.0.0/8, ::1, or IPv4-mapped ::ffff:127.x
    (a dual-stack socket bound to 127.0.0.1 shows as that)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def joined_cluster(address: str | None = None) -> bool:
    """True when genbench runs on a cluster it did not start: --address or RAY_ADDRESS (a `ray
    job submit` driver gets RAY_ADDRESS), or a process that connected to a Ray someone else
    started (a Ray worker, such as a Tune trial). Asked after Ray is up."""
    if joins_cluster(address):
        return True
    node = ray_private.connected_node()
    return node is not None and not node.is_head()


def started_ray_here() -> bool:
    """True in a driver that started the Ray it is connected to: the Ray ends with this
    process. False in a Ray worker process (a Tune trial) and on a cluster joined."""
    node = ray_private.connected_node()
    return node is not None and node.is_head() and not joins_cluster()


def joins_cluster(address: str | None = None) -> bool:
    """Whether init_ray(address) joins a running cluster rather than starting a local Ray: only
    when --address or RAY_ADDRESS names one ("local" does not). A `ray start` cluster recorded
    on this machine is never joined unasked (on a shared host it may be someone else's); on a
    cluster's head, RAY_ADDRESS=auto (set by ray_cluster.yaml) joins the head's own cluster."""
    given = address or os.environ.get("RAY_ADDRESS")
    return bool(given) and given != "local"


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

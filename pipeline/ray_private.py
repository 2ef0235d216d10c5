"""Every use of Ray's private APIs in genbench, in one module (checked against Ray 2.60).

Each is looked up when it is used, and where a Ray release lacks it the function falls back to
Ray's public behaviour or to doing without (each says which), never to an error: the
optimisations and safety nets built on them degrade, the run does not.
"""
from __future__ import annotations

import contextlib


def connected_node():
    """The Ray node object this process started or connected to (ray._private.worker's
    _global_node: no public API says who started the connected cluster), or None: without it,
    genbench takes the Ray to be one it started only where it knows it did."""
    try:
        from ray._private import worker
    except ImportError:
        return None
    return getattr(worker, "_global_node", None)


def bootstrap_address(address: str | None) -> str | None:
    """What ray.init would connect to for `address` ("auto": the `ray start` cluster recorded on
    this machine; raises ConnectionError when none runs, as Ray does), or None where this Ray
    lacks services.canonicalize_bootstrap_address (ray.init then says it itself)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    return canonicalize_bootstrap_address(address, None)


@contextlib.contextmanager
def single_machine_mode(enabled: bool = True):
    """While ray.init starts a local node (pipeline/cluster.py): every Ray server of it on
    127.0.0.1. Also while it
    joins a cluster at a loopback address (such a node), which it would otherwise rewrite to
    the machine's routable address, where nothing listens.

    Ray 2.60 offers no bind option for a local node, and ray.init(_node_ip_address="127.0.0.1")
    does not help: ray.init replaces a loopback address by the machine's routable one
    (services.resolve_ip_for_localhost, ray/_private/services.py). The node address decides
    where the servers listen: the C++ gRPC servers (GCS, raylet and its object manager, each
    worker's core-worker server) bind 127.0.0.1 only when it is 127.0.0.1, all interfaces
    otherwise; so do the dashboard agent and the runtime-env agent (ray/dashboard/agent.py,
    is_localhost). Ray's single-machine mode, the default on macOS and Windows, is what makes
    it 127.0.0.1: with ray_constants.ENABLE_RAY_CLUSTER false, services.get_node_ip_address()
    returns the loopback address. Set here for ray.init only (the servers are started by then),
    not through RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER in the environment: child processes would
    inherit it, and it makes `ray start --address` refuse to join a cluster."""
    try:
        from ray._private import ray_constants, services
    except ImportError:
        enabled = False
    if not enabled or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER") \
            or not hasattr(services, "get_node_ip_address"):
        yield  # a Ray without the switch: the local node's token still guards it
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def reset_auth_token_cache() -> None:
    """Make this process read RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH again: a driver that ran a Ray
    before has its token mode and token cached (ray._raylet). Without the loader: nothing to
    reset (a Ray that old caches nothing)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config as RayConfig
        RayConfig.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


def placement_group(hex_id: str):
    """The PlacementGroup of an id in hex (ray._raylet.PlacementGroupID: the public API hands
    out groups, not ids), or None where this Ray lacks the id class (the group is then left to
    Ray, released with the job)."""
    try:
        from ray._raylet import PlacementGroupID
    except ImportError:
        return None
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(PlacementGroupID.from_hex(hex_id))


def trainer_without_callbacks(trainer_cls, unused):
    """A subclass of a Ray Train trainer whose default callbacks (helper actors Ray Train
    starts for every run) skip those whose class name unused(trainer) returns, through Ray's
    private `_create_default_callbacks`; where a release lacks it, trainer_cls itself."""
    if not hasattr(trainer_cls, "_create_default_callbacks"):
        return trainer_cls

    class Lean(trainer_cls):
        def _create_default_callbacks(self):
            skip = unused(self)
            return [cb for cb in super()._create_default_callbacks()
                    if type(cb).__name__ not in skip]

    Lean.__name__ = Lean.__qualname__ = f"Lean{trainer_cls.__name__}"
    return Lean


def torch_backend_class():
    """Ray Train's backend behind TorchConfig (ray.train.torch.config._TorchBackend), to extend
    its start-up, or None where it moved (the plain TorchConfig then)."""
    try:
        from ray.train.torch.config import _TorchBackend
    except ImportError:
        return None
    return _TorchBackend

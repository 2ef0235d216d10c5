"""Issue 27, closed doors on one machine: the local Ray that `genbench train` starts listens on
127.0.0.1 only and admits only a driver with its token (a fresh one, in a file only this user can
read); a cluster is joined only through --address or RAY_ADDRESS, never because a `ray start`
cluster is recorded on the machine.

The run is a real `genbench train` subprocess without RAY_ADDRESS; its Ray's listening sockets are
read with psutil (the genbench process and every descendant: GCS, raylet, agents, workers)."""
from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
import sys
import time

import psutil
import pytest


def loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)  # a dual-stack socket bound to 127.0.0.1
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def listening(root: psutil.Process) -> dict[tuple[str, int], str]:
    """(address, port) -> process name, for every TCP socket that root or a descendant listens
    on."""
    try:
        family = {p.pid: p for p in root.children(recursive=True)} | {root.pid: root}
    except psutil.NoSuchProcess:
        return {}
    found = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in family:
            try:
                name = family[conn.pid].name()
            except psutil.NoSuchProcess:
                continue
            found[(conn.laddr.ip, conn.laddr.port)] = name
    return found


def driver(gcs_port: int, env: dict, tmp_path) -> subprocess.CompletedProcess:
    """A Python driver that joins the run's Ray with ray.init(address=127.0.0.1:PORT)."""
    code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print('JOINED', ray.cluster_resources().get('CPU'))")
    env = {**env,
           # Ray rewrites 127.0.0.1 in an address to the machine's routable one (where this
           # Ray does not listen) except in its single-machine mode: so the driver dials
           # loopback, and what answers is the run's GCS itself.
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_gcs_server_port_wait_time_s": "3"}  # fail in seconds, not Ray's ~20 s of retries
    return subprocess.run([sys.executable, "-c", code, f"127.0.0.1:{gcs_port}"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_local_ray_of_a_train_run_listens_on_loopback_and_wants_its_token(tmp_path, fast_sets):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = open(tmp_path / "train.log", "w")
    run = subprocess.Popen([sys.executable, "-m", "genbench", "train", "--model", "ae",
                            "--steps", "200", "--workers", "2", "--experiment", "loopback",
                            *fast_sets("ae")],
                           cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    root = psutil.Process(run.pid)
    seen: dict[tuple[str, int], str] = {}
    names: set[str] = set()
    refused = joined = None
    try:
        deadline = time.time() + 240
        while run.poll() is None and time.time() < deadline:
            found = listening(root)
            seen |= found
            # every name a socket's process had: an exiting worker reads as its 15-character
            # comm ("ray::RayTrainWo"), which would overwrite its full name in `seen`
            names |= set(found.values())
            if refused is None and "gcs_server" in names and any(
                    "RayTrainWorker" in n for n in names):
                # The run is training: its GCS, raylet, agents and a Train worker are up.
                gcs = next(p for p in root.children(recursive=True) if p.name() == "gcs_server")
                token_path = gcs.environ()["RAY_AUTH_TOKEN_PATH"]  # as genbench started it
                gcs_port = next(port for (_, port), n in seen.items() if n == "gcs_server")
                assert stat.S_IMODE(os.stat(token_path).st_mode) == 0o600
                assert stat.S_IMODE(os.stat(os.path.dirname(token_path)).st_mode) == 0o700
                home = tmp_path / "home"  # no ~/.ray/auth_token (Ray's default token) there
                home.mkdir()
                refused = driver(gcs_port, {**env, "HOME": str(home)}, tmp_path)
                joined = driver(gcs_port, {**env, "RAY_AUTH_MODE": "token",
                                           "RAY_AUTH_TOKEN_PATH": token_path}, tmp_path)
            time.sleep(0.5)
        code = run.wait(timeout=max(1, deadline - time.time()))
    finally:
        if run.poll() is None:
            run.kill()
        log.close()
    output = (tmp_path / "train.log").read_text()
    assert code == 0, output[-3000:]
    assert {"gcs_server", "raylet"} <= names, seen  # the sockets of the run's Ray were read
    assert any("RayTrainWorker" in n for n in names), seen
    public = {addr: name for addr, name in seen.items() if not loopback(addr[0])}
    assert not public, f"listening beyond loopback: {public}"
    # A driver without the token is refused by the GCS; with it, the same call joins.
    assert refused is not None, "the run ended before its Train worker was seen"
    assert refused.returncode != 0 and "JOINED" not in refused.stdout
    assert "InvalidAuthToken" in refused.stderr or "AuthenticationError" in refused.stderr, \
        refused.stderr[-2000:]
    assert joined.returncode == 0 and "JOINED" in joined.stdout, joined.stderr[-2000:]


def test_a_recorded_cluster_is_not_joined_unasked(tmp_path, monkeypatch):
    """A `ray start` cluster leaves its address in <temp dir>/ray_current_cluster, which a bare
    ray.init() joins; genbench joins only --address / RAY_ADDRESS, and starts its own Ray with
    address="local" otherwise."""
    from ray._private import services

    from pipeline.cluster import joined_cluster, joins_cluster, started_ray_here

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # Ray's temp dir (RAY_TMPDIR/ray), with a cluster recorded in it as `ray start` records one.
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    recorded = tmp_path / "ray" / "ray_current_cluster"
    recorded.parent.mkdir()
    recorded.write_text("10.9.8.7:6379")
    assert services.canonicalize_bootstrap_address(None) == "10.9.8.7:6379"  # ray.init() would
    assert not joins_cluster(None)
    assert services.canonicalize_bootstrap_address("local") is None  # what init_ray passes
    # Joined only when asked for, by flag or environment ("local" asks for a local Ray).
    assert joins_cluster("10.9.8.7:6379")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert joins_cluster(None) and joined_cluster(None) and not started_ray_here()
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert not joins_cluster(None) and not joins_cluster("local")

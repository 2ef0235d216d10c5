"""Can a command reach the services it needs? An unreachable Ray address or MLflow tracking
store becomes one line (exit 2) within seconds, before anything starts, instead of minutes of
retries. Cheap on purpose: no torch, no mlflow import (each costs seconds), so a user hears back
fast. tracking.py and cluster.py use these; genbench/cli.py calls them before every command."""
from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

from pipeline.errors import ConfigError

# The schemes MLflow 3 ships a tracking store for (file is retired); plugins add theirs through
# the mlflow.tracking_store entry points.
KNOWN_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
                 "databricks-uc", "uc"}
FIX_URI = ("set MLFLOW_TRACKING_URI to sqlite:///mlflow.db, to a running `mlflow server` "
           "(http://host:port), or unset it")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else MLflow's own default: sqlite file mlflow.db here (absolute,
    so Ray workers with another working directory write to the same file)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).absolute())
        return uri
    return f"sqlite:///{Path('mlflow.db').absolute()}"


def plugin_schemes() -> set[str]:
    from importlib.metadata import entry_points
    return {ep.name for ep in entry_points(group="mlflow.tracking_store")}


def check_store(uri: str | None = None, timeout: float = 5.0, tries: int = 2) -> None:
    """A one-line ConfigError, before anything is created, when MLflow cannot use the tracking
    URI: a scheme it has no store for, the retired file store, or an HTTP server that does not
    answer (each try waits at most `timeout` s). Creates nothing: a sqlite file stays unopened."""
    uri = uri or tracking_uri()
    if uri in ("databricks", "databricks-uc", "uc"):  # MLflow's bare names for Databricks
        return
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        raise ConfigError(f"MLFLOW_TRACKING_URI={uri} is a file store, which MLflow 3 no longer "
                          f"writes; {FIX_URI}")
    if scheme.split("+")[0] not in KNOWN_SCHEMES | plugin_schemes():
        raise ConfigError(f"MLFLOW_TRACKING_URI={uri} has a scheme MLflow does not know "
                          f"({scheme}://); {FIX_URI}")
    if scheme in ("http", "https"):
        reason = unreachable(uri, timeout, tries)
        if reason:
            raise ConfigError(f"cannot reach the MLflow tracking server at {uri} ({reason}); "
                              f"start it (mlflow server --backend-store-uri sqlite:///mlflow.db "
                              f"--port PORT) or point MLFLOW_TRACKING_URI at a running one "
                              f"(or at sqlite:///mlflow.db)")


def unreachable(uri: str, timeout: float = 5.0, tries: int = 2) -> str | None:
    """Why an HTTP tracking server does not answer, or None when it does (or is no server). Any
    HTTP answer counts (an auth error is the server's to explain); refused or silent connections
    do not."""
    import requests

    if urlparse(uri).scheme not in ("http", "https"):
        return None
    reason = None
    for attempt in range(tries):
        if attempt:
            time.sleep(1.0)
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout)
            return None
        except requests.Timeout:
            reason = f"no answer within {timeout:.0f} s"
        except requests.ConnectionError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else "cannot connect"
    return f"{reason}, {tries} tries"


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
        from pipeline.ray_private import bootstrap_address
        try:
            target = bootstrap_address("auto")
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

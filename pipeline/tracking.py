"""MLflow: the only module that imports mlflow. The driver opens and closes runs; rank 0 logs.

Runs are addressed by id through MlflowClient (no global active run), so a restarted worker
group, or a resumed run, keeps logging into the same MLflow run.
"""
from __future__ import annotations

import io
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline import schema
from pipeline.errors import ConfigError, RunStopped
from pipeline.services import tracking_uri, unreachable  # noqa: F401 (part of this API)
from pipeline.spool import Spool, replay_command, run_dir
from pipeline.spool import root as spool_root

# MLflow's HTTP client retries 7 times with a growing backoff and waits up to 120 s per try, so a
# tracking server that is down holds every call for minutes. Every process that imports this
# module (the driver and each Ray worker) gives up after ~10 s instead; a user's own setting wins.
BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
for _name, _value in BOUNDED_HTTP.items():
    os.environ.setdefault(_name, _value)


# --- outages: waited out for a budget, then kept in a spool on disk (pipeline/spool.py) --------
# Each MLflow call still gives up after ~10 s (above); the long wait is genbench's own loop, which
# probes the server's /health (instant while it is down) between tries, every 1 s doubling to
# 15 s, for the budget: train.tracking_outage_s (set_outage_budget), GENBENCH_TRACKING_OUTAGE_S
# overriding it, else DEFAULT_OUTAGE_S. The budget counts from the last successful write.
OUTAGE_ENV = "GENBENCH_TRACKING_OUTAGE_S"
DEFAULT_OUTAGE_S = 600.0
BACKOFF_S = (1.0, 15.0)   # first pause, longest pause
_outage_s: float | None = None


class TrackingLost(RunStopped):
    """The tracking server stayed unreachable past the outage budget; what could not be written
    is in a spool on disk and the message names it and the command that replays it (exit 1)."""


def set_outage_budget(seconds: float | None) -> None:
    """This process's outage budget (e.g. train.tracking_outage_s); None: the default."""
    global _outage_s
    _outage_s = None if seconds is None else float(seconds)


def outage_budget() -> float:
    text = os.environ.get(OUTAGE_ENV)
    if text:
        try:
            value = float(text)
            if not value >= 0 or value == float("inf"):
                raise ValueError
        except ValueError:
            raise ConfigError(f"{OUTAGE_ENV}={text!r} must be a number of seconds >= 0 (how "
                              f"long a tracking-server outage is waited out)") from None
        return value
    return DEFAULT_OUTAGE_S if _outage_s is None else _outage_s


def is_unreachable(exc: BaseException) -> bool:
    """Does the error mean the tracking server did not answer (refused or reset connections,
    timeouts, 5xx answers after MLflow's own retries), rather than that it refused the request
    (a bad value, an unknown run: those fail at once, as before)?"""
    import requests
    import urllib3

    seen = set()
    while exc is not None and id(exc) not in seen:  # MLflow wraps the requests error
        seen.add(id(exc))
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions
                            .RetryError, requests.exceptions.ChunkedEncodingError,
                            urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, mlflow.exceptions.MlflowException) and \
                exc.get_http_status_code() in (502, 503, 504):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _pause_s(attempt: int) -> float:
    return min(BACKOFF_S[0] * 2 ** attempt, BACKOFF_S[1])


def _down(uri: str) -> str | None:
    """Why an HTTP server looks down (one cheap /health probe), or None (or no server)."""
    return unreachable(uri, timeout=5, tries=1)


def _lost_message(uri: str, budget: float, exc: BaseException, what: str, directory) -> str:
    reason = _down(uri) or str(exc).splitlines()[0][:200]
    return (f"the MLflow tracking server at {uri} was unreachable for {budget:.0f} s ({reason}); "
            f"{what} kept in {directory}: when it is back, {replay_command(directory)}")


def _wait_out(run_id: str, uri: str, call, record: dict | None, what: str,
              budget_s: float | None = None):
    """call() until it succeeds; outages are waited out for the budget, then `record` (a write;
    None for a read) goes to the run's spool and TrackingLost says how to replay it. Other
    errors are raised at once."""
    budget = outage_budget() if budget_s is None else budget_s
    start, attempt = time.monotonic(), 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            left = budget - (time.monotonic() - start)
            if left <= 0:
                if record is None:
                    raise TrackingLost(f"the MLflow tracking server at {uri} was unreachable "
                                       f"for {budget:.0f} s ({_down(uri) or exc}) while "
                                       f"reading run {run_id}") from None
                spool = Spool.create(run_id, uri)
                spool.append([record])
                raise TrackingLost(_lost_message(uri, budget, exc, what, spool.dir)) from None
            while True:  # wait for /health to answer (cheap) before the real call again
                time.sleep(min(_pause_s(attempt), left))
                attempt += 1
                left = budget - (time.monotonic() - start)
                if left <= 0 or not _down(uri):
                    break


def spool_hint(run_id: str) -> str | None:
    """Where this machine keeps records of the run that never reached MLflow, and how to send
    them, or None when it keeps none."""
    dirs = sorted(p for p in run_dir(run_id).parent.glob(f"{run_id}*") if Spool.is_spool(p))
    if not dirs:
        return None
    return f"send what it kept on disk: {' and '.join(replay_command(d) for d in dirs)}"


def client(uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri=uri or tracking_uri())


def experiment_id(c: MlflowClient, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name)
    if exp.lifecycle_stage == "deleted":
        raise ConfigError(f"experiment {name!r} is deleted in MLflow; restore it "
                          f"(mlflow experiments restore) or pick another --experiment")
    return exp.experiment_id


def versions_and_hardware(gpu: bool = False) -> dict[str, str]:
    import ray
    import torch

    from pipeline import VERSION
    tags = {schema.VERSION: VERSION, schema.TORCH_VERSION: torch.__version__,
            schema.RAY_VERSION: ray.__version__, schema.MLFLOW_VERSION: mlflow.__version__,
            schema.PYTHON_VERSION: platform.python_version(),
            schema.HARDWARE_CPU: platform.processor() or platform.machine(),
            schema.HARDWARE_CPUS: str(os.cpu_count())}
    if gpu and torch.cuda.is_available():
        tags[schema.HARDWARE_GPU] = torch.cuda.get_device_name(0)
    commit = git_commit()
    if commit:
        tags[schema.GIT_COMMIT] = commit
    return tags


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def start_run(experiment: str, run_name: str, params: dict, tags: dict,
              uri: str | None = None) -> str:
    c = client(uri)
    run = c.create_run(experiment_id(c, experiment), run_name=run_name, tags=tags)
    log_params(run.info.run_id, params, uri)
    return run.info.run_id


def log_params(run_id: str, params: dict, uri: str | None = None) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    c = client(uri)
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        c.log_batch(run_id, params=items[i:i + 100])


def set_tags(run_id: str, tags: dict, uri: str | None = None,
             budget_s: float | None = None) -> None:
    """Waits out an outage for the budget (default outage_budget()), then spools the tags and
    raises TrackingLost."""
    uri = uri or tracking_uri()
    tags = {k: str(v) for k, v in tags.items()}
    _wait_out(run_id, uri, lambda: client(uri).log_batch(
                  run_id, tags=[RunTag(k, v) for k, v in tags.items()]),
              {"tags": tags}, "its tags are", budget_s)


def run_tags(run_id: str, uri: str | None = None, budget_s: float | None = None) -> dict:
    """The run's tags, read through an outage (for the budget)."""
    uri = uri or tracking_uri()
    return dict(_wait_out(run_id, uri, lambda: client(uri).get_run(run_id), None, "",
                          budget_s).data.tags)


def end_run(run_id: str, status: str = "FINISHED", uri: str | None = None,
            budget_s: float | None = None) -> None:
    """Waits out an outage for the budget (default outage_budget(); 0: one try), then spools
    the status (`genbench tracking replay` sets it) and raises TrackingLost."""
    uri = uri or tracking_uri()
    _wait_out(run_id, uri, lambda: client(uri).set_terminated(run_id, status),
              {"status": status}, f"its end ({status}) is", budget_s)


def child_runs(parent_run_id: str, uri: str | None = None) -> list:
    """Runs tagged mlflow.parentRunId = parent (a sweep's trials), oldest first."""
    c = client(uri)
    parent = c.get_run(parent_run_id)
    return list(reversed(c.search_runs([parent.info.experiment_id],
                                       f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                       max_results=50000)))


def get_run(run_id: str):
    try:
        return client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"no MLflow run {run_id!r} at {tracking_uri()}; check the id "
                          f"and MLFLOW_TRACKING_URI") from None


class RunLogger:
    """Rank 0's handle on one MLflow run. Calls only queue the record: a background thread writes
    them in batches, so the training loop never waits for the tracking store. flush() waits
    until everything queued is written (on Ray's upload thread, before a checkpoint is
    registered); close() flushes and stops the thread. Any thread may call flush().

    Outages: while the tracking server does not answer, the thread appends what is queued to the
    run's spool on disk (pipeline/spool.py) and sends it, in order, once the server is back;
    flush() waits until it is really in MLflow, so a registered checkpoint still implies its
    points are stored. Past the outage budget (outage_budget(), or outage_s) the error is
    TrackingLost, naming the spool, which stays on disk for `genbench tracking replay`.

    A write that fails (past the budget, or any error that is not an outage) is raised by every
    later call, the loop's and the upload thread's flush alike (the worker then fails and Ray
    restarts it from its last checkpoint; nothing is lost, see below): raised only once, the loop
    could take it while a checkpoint whose points were never stored went on to be registered.

    Exactly once after a restart: a worker group restarted from a checkpoint at step k repeats
    the steps after k, whose metric points the failed group may already have written. The
    thread reads the run's logged (key, step) pairs before its first write and skips those;
    a checkpoint is registered only after a flush (pipeline/train.py), so every point up to k
    is already there. The failed group's spool on this machine, if any, is sent first, and its
    points count as logged too. Sending a record twice is harmless: MLflow keeps one copy of an
    identical point (same key, step, value and timestamp).
    """

    BATCH = 1000      # MLflow's limit of metrics per log_batch
    LINGER_S = 1.0    # gather records for this long between writes (fewer, larger writes)
    RETRIES = 3       # for errors that are not outages (e.g. a busy sqlite file)

    def __init__(self, run_id: str, uri: str, restarted: bool = False,
                 outage_s: float | None = None, spool_root: str | Path | None = None):
        self.run_id, self.uri, self.client = run_id, uri, MlflowClient(tracking_uri=uri)
        self._restarted = restarted
        self._outage_s, self._spool_root = outage_s, spool_root
        self._spool: Spool | None = None   # set while records wait on disk
        self._adopted = 0                  # records of an earlier logger's spool: sent first
        self._skip: set[tuple[str, int]] | None = None
        self._cond = threading.Condition()
        self._queue: list = []        # ("metrics", [Metric]) | ("file", bytes, artifact path)
        self._queued = self._taken = self._written = 0
        self._urgent = self._closing = False
        self._error: BaseException | None = None
        self._error_raised = False
        self._thread = threading.Thread(target=self._run, name="mlflow-writer", daemon=True)
        self._thread.start()

    @property
    def spool_dir(self) -> Path | None:
        """The directory records wait in during an outage (None while there is none)."""
        spool = self._spool
        return spool.dir if spool is not None else None

    # --- the loop's side: cheap, never touches the store ---------------------------------------
    def metrics(self, values: dict[str, float], step: int, timestamp: float | None = None) -> None:
        """Queue one point per key at `step`; timestamp (seconds, default now) is when the values
        were measured, not when the thread writes them."""
        ts = int((time.time() if timestamp is None else timestamp) * 1000)
        self._put(("metrics", [Metric(k, float(v), ts, step) for k, v in values.items()]))

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Queue a copy of a file (read now, so the caller may delete it)."""
        path = Path(path)
        name = f"{artifact_path}/{path.name}" if artifact_path else path.name
        self._put(("file", path.read_bytes(), name))

    def figure_png(self, png_bytes: bytes, artifact_file: str) -> None:
        self._put(("file", png_bytes, artifact_file))

    def flush(self) -> None:
        """Wait until everything queued so far is written (through an outage: stored in MLflow,
        not only spooled)."""
        with self._cond:
            target, self._urgent = self._queued, True
            self._cond.notify_all()
            while self._written < target and self._error is None:
                self._cond.wait()
            self._raise_error()

    def close(self) -> None:
        """Flush and stop the thread; safe to call twice. A write error already raised to the
        caller is not raised again."""
        raised_before = self._error_raised
        try:
            self.flush()
        except RuntimeError:
            if not raised_before:
                raise
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join()

    def _put(self, item) -> None:
        with self._cond:
            self._raise_error()
            if self._closing:
                raise RuntimeError(f"the logger of MLflow run {self.run_id} is closed")
            self._queue.append(item)
            self._queued += 1
            self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:  # kept: the logger is broken for good
            self._error_raised = True
            raise RuntimeError(f"logging to MLflow run {self.run_id} failed: "
                               f"{self._error}") from self._error

    # --- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._adopt()
            if self._spool is not None:
                self._drain()
        except Exception as exc:
            self._fail(exc)
        last_write = 0.0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    if self._spool is not None:
                        self._spool.release()  # an earlier failure left it: kept on disk
                    return
                deadline = last_write + self.LINGER_S
                while not (self._urgent or self._closing) and time.monotonic() < deadline:
                    self._cond.wait(deadline - time.monotonic())
                items, self._queue, self._urgent = self._queue, [], False
                self._taken += len(items)
            try:
                if self._error is not None:  # keep what is queued for the replay
                    if self._spool is not None:
                        self._spool.append(_records(items))
                elif self._spool is not None:  # an outage: behind what waits on disk
                    self._spool.append(_records(items))
                    self._drain()
                else:
                    try:
                        self._write(items)
                    except Exception as exc:
                        if not is_unreachable(exc):
                            raise
                        # Some of them may be stored: sent again, they are not duplicated.
                        self._open_spool().append(_records(items))
                        self._drain()
            except Exception as exc:  # handed to the loop at its next call
                self._fail(exc)
            last_write = time.monotonic()
            with self._cond:
                self._written = self._taken
                self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._written = self._taken
            self._cond.notify_all()

    def _skip_set(self) -> set[tuple[str, int]]:
        if self._skip is None:
            self._skip = self._logged_points() if self._restarted else set()
        return self._skip

    def _logged_points(self) -> set[tuple[str, int]]:
        """(key, step) of every point this run already holds."""
        run = self._retry(self.client.get_run, self.run_id)
        return {(key, m.step) for key in run.data.metrics
                for m in self._retry(self.client.get_metric_history, self.run_id, key)}

    def _write(self, items: list) -> None:
        skip = self._skip_set()
        metrics: list[Metric] = []
        for item in items + [("end",)]:
            if item[0] == "metrics":
                metrics += [m for m in item[1] if (m.key, m.step) not in skip]
                continue
            for i in range(0, len(metrics), self.BATCH):  # keep the queue's order around files
                self._retry(self.client.log_batch, self.run_id, metrics=metrics[i:i + self.BATCH])
            metrics = []
            if item[0] == "file":
                self._retry(self._log_file, item[1], item[2])

    def _log_file(self, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(artifact_file).name
            target.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(target), None if parent == "." else parent)

    def _retry(self, fn, *args, **kwargs):
        for attempt in range(self.RETRIES):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # e.g. a busy sqlite file; the last failure is raised
                if attempt == self.RETRIES - 1 or is_unreachable(exc):  # outages: _drain's
                    raise
                time.sleep(0.5 * 2 ** attempt)

    # --- outages ---------------------------------------------------------------------------------
    def _open_spool(self) -> Spool:
        """This run's spool directory, or a directory of its own where another live process
        (an earlier worker not yet gone) still owns that one."""
        spool = Spool.create(self.run_id, self.uri, self._spool_root)
        if not spool.try_own():
            spool = Spool.create(self.run_id, self.uri, self._spool_root,
                                 name=f"{self.run_id}.{os.getpid()}-{time.time_ns()}")
            spool.try_own()
        self._spool = spool
        return spool

    def _adopt(self) -> None:
        """A restarted group (or --resume) on the machine where the failed one kept a spool of
        this run: send that first; its points then count as logged."""
        if not self._restarted:
            return
        spool = Spool(run_dir(self.run_id, self._spool_root))
        if Spool.is_spool(spool.dir) and spool.try_own():
            if spool.pending():
                self._spool, self._adopted = spool, len(spool.records())
            else:
                spool.remove()

    def _drain(self) -> None:
        """Send the spool until it is empty, then delete it. While the server is down, wait (the
        next try 1 s later, doubling to 15 s), moving whatever the loop queues meanwhile onto
        the spool; past the budget, raise TrackingLost with everything queued on disk."""
        budget = outage_budget() if self._outage_s is None else self._outage_s
        since, attempt = time.monotonic(), 0
        while True:
            sent_before = self._spool.sent()
            try:
                if _down(self.uri):
                    raise ConnectionError("the server does not answer /health")
                self._skip_set()
                send_spool(self.client, self.run_id, self._spool, self._skip, self._adopted,
                           self.BATCH)
                self._spool.remove()
                self._spool, self._adopted = None, 0
                return
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                if self._spool.sent() > sent_before:  # progress: the budget starts again
                    since, attempt = time.monotonic(), 0
                if time.monotonic() - since >= budget:
                    raise self._give_up(exc, budget) from None
                self._gather(_pause_s(attempt))
                attempt += 1

    def _gather(self, seconds: float) -> None:
        """Wait `seconds`, appending what the loop queues meanwhile to the spool."""
        end = time.monotonic() + seconds
        while True:
            with self._cond:
                if not self._queue:
                    left = end - time.monotonic()
                    if left <= 0:
                        return
                    self._cond.wait(left)
                items, self._queue = self._queue, []
                self._taken += len(items)
            if items:
                self._spool.append(_records(items))

    def _give_up(self, exc: BaseException, budget: float) -> TrackingLost:
        with self._cond:  # the last records join the spool, and no new one is taken
            items, self._queue = self._queue, []
            self._taken += len(items)
            self._spool.append(_records(items))
            self._error = TrackingLost(_lost_message(self.uri, budget, exc,
                                                     "its unsent records are", self._spool.dir))
            self._spool.release()
            return self._error


def _records(items: list) -> list[dict]:
    """Queue items -> spool records (pipeline/spool.py)."""
    out = []
    for item in items:
        if item[0] == "metrics":
            out.append({"metrics": [[m.key, m.value, m.timestamp, m.step] for m in item[1]]})
        else:
            out.append({"file": item[2], "data": item[1]})
    return out


def send_spool(c: MlflowClient, run_id: str, spool: Spool, skip: set[tuple[str, int]],
               adopted: int = 0, batch: int = 1000) -> int:
    """Send a spool's unsent records in order, counting each as sent once it is stored; returns
    how many. Points whose (key, step) is in `skip` are left out, and each point sent joins it
    (the first record of a point wins, as in RunLogger). Records before index `adopted` came
    from an earlier worker group: their end status is not applied (this run goes on)."""
    records, done = spool.records(), spool.sent()
    i = done
    while i < len(records):
        record = records[i]
        if "metrics" in record:  # consecutive metric records in one log_batch
            metrics, j = [], i
            while j < len(records) and "metrics" in records[j] and len(metrics) < batch:
                for key, value, ts, step in records[j]["metrics"]:
                    if (key, step) not in skip:
                        metrics.append(Metric(key, float(value), int(ts), int(step)))
                j += 1
            for k in range(0, len(metrics), batch):
                c.log_batch(run_id, metrics=metrics[k:k + batch])
            skip.update((m.key, m.step) for m in metrics)
            i = j
        elif "file" in record:
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / Path(record["file"]).name
                target.write_bytes(spool.blob(record))
                parent = str(Path(record["file"]).parent)
                c.log_artifact(run_id, str(target), None if parent == "." else parent)
            i += 1
        elif "tags" in record:
            c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])
            i += 1
        else:
            if "status" in record and i >= adopted:
                c.set_terminated(run_id, record["status"])
            i += 1
        spool.mark_sent(i)
    return len(records) - done


def replay_spool(directory: str | Path, uri: str | None = None) -> tuple[str, str, int]:
    """Send a spool's unsent records to its run (at the URI it was written for, or `uri`),
    leaving out points whose (key, step) the run already holds, then delete the spool.
    Returns (run id, tracking URI, records sent). A one-line ConfigError when the server is
    still down, the run is gone, or a live process is sending the spool itself."""
    spool = Spool(directory)
    if not Spool.is_spool(spool.dir):
        raise ConfigError(f"{directory} is not a genbench spool (it has no meta.json); give a "
                          f"directory under {spool_root()}")
    meta = spool.meta()
    run_id, uri = meta["run_id"], uri or meta["tracking_uri"]
    if not spool.try_own():
        raise ConfigError(f"spool {spool.dir} is being sent by a running genbench process "
                          f"(it holds owner.lock); let it finish or stop it, then run this again")
    try:
        reason = _down(uri)
        if reason:
            raise ConfigError(f"cannot reach the MLflow tracking server at {uri} ({reason}); "
                              f"the spool is kept: run this again when the server is back")
        c = client(uri)
        try:
            run = c.get_run(run_id)
        except mlflow.exceptions.MlflowException as exc:
            if is_unreachable(exc):
                raise
            raise ConfigError(f"no MLflow run {run_id} at {uri}; replay into the store that "
                              f"holds it with --tracking-uri") from None
        skip = {(key, m.step) for key in run.data.metrics
                for m in c.get_metric_history(run_id, key)}
        count = send_spool(c, run_id, spool, skip)
    except Exception as exc:
        spool.release()
        if is_unreachable(exc):
            raise ConfigError(f"lost the MLflow tracking server at {uri} while replaying; what "
                              f"was sent is counted, the rest is kept: run this again when it "
                              f"is back") from None
        raise
    spool.remove()
    return run_id, uri, count


def latest_metrics(run_id: str, uri: str | None = None) -> dict[str, float]:
    return dict(client(uri).get_run(run_id).data.metrics)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


# --- reading an experiment back (the report) ----------------------------------------------------
def find_experiment(name: str, uri: str | None = None) -> str | None:
    """The id of an active experiment, or None; never creates one."""
    exp = client(uri).get_experiment_by_name(name)
    return exp.experiment_id if exp is not None and exp.lifecycle_stage == "active" else None


def search_runs(experiment_id: str, filter_string: str = "", uri: str | None = None) -> list:
    """Every active run of an experiment that matches, newest first (all pages)."""
    c, runs, token = client(uri), [], None
    while True:
        page = c.search_runs([experiment_id], filter_string, max_results=1000,
                             order_by=["attributes.start_time DESC"], page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def metric_history(run_id: str, key: str, uri: str | None = None) -> list[tuple[int, float]]:
    """(step, value) of every logged point of one metric, by step."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def metric_history_timed(run_id: str, key: str, uri: str | None = None
                         ) -> list[tuple[int, float, float]]:
    """(step, value, timestamp in seconds) of every logged point of one metric, by step."""
    return sorted((m.step, m.value, m.timestamp / 1000)
                  for m in client(uri).get_metric_history(run_id, key))


def list_artifacts(run_id: str, path: str | None = None, uri: str | None = None) -> list[str]:
    """Artifact file paths directly under path (folders left out)."""
    return [f.path for f in client(uri).list_artifacts(run_id, path) if not f.is_dir]


def download_artifact(run_id: str, path: str, dst_dir: str | Path, uri: str | None = None) -> Path:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file
    return Path(client(uri).download_artifacts(run_id, path, str(dst_dir)))

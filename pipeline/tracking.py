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

from pipeline.errors import ConfigError
from pipeline.services import tracking_uri, unreachable  # noqa: F401 (part of this API)

# MLflow's HTTP client retries 7 times with a growing backoff and waits up to 120 s per try, so a
# tracking server that is down holds every call for minutes. Every process that imports this
# module (the driver and each Ray worker) gives up after ~10 s instead; a user's own setting wins.
BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
for _name, _value in BOUNDED_HTTP.items():
    os.environ.setdefault(_name, _value)


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
    tags = {"genbench.version": VERSION, "torch.version": torch.__version__,
            "ray.version": ray.__version__, "mlflow.version": mlflow.__version__,
            "python.version": platform.python_version(),
            "hardware.cpu": platform.processor() or platform.machine(),
            "hardware.cpus": str(os.cpu_count())}
    if gpu and torch.cuda.is_available():
        tags["hardware.gpu"] = torch.cuda.get_device_name(0)
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
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


def set_tags(run_id: str, tags: dict, uri: str | None = None) -> None:
    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def end_run(run_id: str, status: str = "FINISHED", uri: str | None = None) -> None:
    client(uri).set_terminated(run_id, status)


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

    A write that fails after retries is raised by every later call, the loop's and the upload
    thread's flush alike (the worker then fails and Ray restarts it from its last checkpoint;
    nothing is lost, see below): raised only once, the loop could take it while a checkpoint
    whose points were never stored went on to be registered.

    Exactly once after a restart: a worker group restarted from a checkpoint at step k repeats
    the steps after k, whose metric points the failed group may already have written. The
    thread reads the run's logged (key, step) pairs before its first write and skips those;
    a checkpoint is registered only after a flush (pipeline/train.py), so every point up to k
    is already there.
    """

    BATCH = 1000      # MLflow's limit of metrics per log_batch
    LINGER_S = 1.0    # gather records for this long between writes (fewer, larger writes)
    RETRIES = 3

    def __init__(self, run_id: str, uri: str, restarted: bool = False):
        self.run_id, self.client = run_id, MlflowClient(tracking_uri=uri)
        self._restarted = restarted
        self._cond = threading.Condition()
        self._queue: list = []        # ("metrics", [Metric]) | ("file", bytes, artifact path)
        self._queued = self._written = 0
        self._urgent = self._closing = False
        self._error: BaseException | None = None
        self._error_raised = False
        self._thread = threading.Thread(target=self._run, name="mlflow-writer", daemon=True)
        self._thread.start()

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
        """Wait until everything queued so far is written."""
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
        skip: set[tuple[str, int]] | None = None
        last_write = 0.0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                deadline = last_write + self.LINGER_S
                while not (self._urgent or self._closing) and time.monotonic() < deadline:
                    self._cond.wait(deadline - time.monotonic())
                items, self._queue, self._urgent = self._queue, [], False
            try:
                if skip is None:
                    skip = self._logged_points() if self._restarted else set()
                self._write(items, skip)
            except Exception as exc:  # handed to the loop at its next call
                with self._cond:
                    self._error = exc
            last_write = time.monotonic()
            with self._cond:
                self._written += len(items)
                self._cond.notify_all()

    def _logged_points(self) -> set[tuple[str, int]]:
        """(key, step) of every point this run already holds."""
        run = self._retry(self.client.get_run, self.run_id)
        return {(key, m.step) for key in run.data.metrics
                for m in self._retry(self.client.get_metric_history, self.run_id, key)}

    def _write(self, items: list, skip: set[tuple[str, int]]) -> None:
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
            except Exception:  # e.g. a busy sqlite file; the last failure is raised
                if attempt == self.RETRIES - 1:
                    raise
                time.sleep(0.5 * 2 ** attempt)


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

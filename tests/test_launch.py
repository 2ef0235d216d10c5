"""pipeline/launch.py: what the user has is never lost. A run stopped by Ctrl-C or by a lost
tracking server says how to continue (`genbench train --resume RUN_ID`), keeps its checkpoints,
and `--resume` finishes it in the same MLflow run with one metric point per logged step.

The stop lands at a known step: GENBENCH_FAULT pauses rank 0 after step 25 (pipeline/faults.py),
once the checkpoint of step 20 is registered, and the test acts when the run's fault tag shows
the pause began. Both tests use the session's Ray."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from genbench.cli import main
from pipeline import tracking
from pipeline.train import FAULT_TAG

pytestmark = pytest.mark.slow

STEPS = 40
GENBENCH = [sys.executable, "-m", "genbench"]
ARGS = ["train", "--model", "ae", "--workers", "1", "--steps", str(STEPS), "--experiment", "R",
        "--set", "ae.width=8", "--set", "ae.latent_dim=8", "--set", "train.batch_size=32",
        "--set", "train.log_every=10", "--set", "train.checkpoint_every=10",
        "--set", "train.eval_every=1000", "--set", "train.checkpoint_min_interval_s=0"]
PAUSE_AFTER_25 = "rank=0,step=25,action=pause,seconds={}"


def the_run(uri: str):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("R")
    runs = c.search_runs([exp.experiment_id]) if exp else []
    assert len(runs) <= 1, "a resume must not open another run"
    return runs[0] if runs else None


def wait_until_paused(uri: str, timeout: float = 400, proc=None) -> str:
    """The run's id, once rank 0 has begun its pause after step 25."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"genbench exited ({proc.returncode}) before the pause:\n"
                        f"{proc.stderr.read()[-3000:]}")
        try:
            run = the_run(uri)
        except Exception:  # the store is being created, or the server is busy
            run = None
        if run is not None and FAULT_TAG in run.data.tags:
            return run.info.run_id
        time.sleep(0.5)
    pytest.fail("the run never reached its pause at step 25")


def wait_for_free_cpus(ray, timeout: float = 120) -> None:
    """The stopped run's workers have ended (their CPUs are back)."""
    deadline = time.time() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.time() < deadline, "the stopped run's workers never ended"
        time.sleep(0.2)


def check_resumed(uri: str, run_id: str) -> None:
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "mse")]
    assert sorted(steps) == list(range(10, STEPS + 1, 10)), steps   # no gap, no copy


def as_from_a_shell() -> None:
    """The child starts as a program a shell starts: SIGINT handled by default and not blocked,
    whatever this test process inherited (on an xdist worker, a driver started here once ignored
    the SIGINT below until its timeout)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def signal_state(pid: int) -> str:
    """SigBlk/SigIgn/SigCgt of a process (bit 1 is SIGINT), for a failure message."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "unknown"
    return ", ".join(line for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


def test_ctrl_c_says_how_to_resume_and_resume_finishes_the_run(ray_local, workdir, mlflow_uri,
                                                                capsys):
    address = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "GENBENCH_FAULT": PAUSE_AFTER_25.format(300)}
    proc = subprocess.Popen([*GENBENCH, *ARGS, "--address", address], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_shell)
    try:
        run_id = wait_until_paused(mlflow_uri, proc=proc)
        signals = signal_state(proc.pid)
        proc.send_signal(signal.SIGINT)   # Ctrl-C on the driver
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the driver did not stop on SIGINT; its signal state before: {signals}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    hint = f"genbench train --resume {run_id}"
    assert f"(if it stops: {hint})" in err                 # said at the start, too
    last = err.strip().splitlines()[-1]
    assert last == f"genbench: interrupted; its checkpoint of step 20 is kept: {hint}", last
    assert "Traceback" not in err
    assert the_run(mlflow_uri).info.status == "KILLED"

    wait_for_free_cpus(ray_local)
    assert main(["train", "--resume", run_id]) == 0, capsys.readouterr().err[-3000:]
    check_resumed(mlflow_uri, run_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(port: int, root: Path) -> subprocess.Popen:
    log = open(root / "mlflow-server.log", "a")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            # no job runner (huey consumer processes): only tracking is used
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while tracking.unreachable(uri, timeout=2, tries=1):
        assert proc.poll() is None, (root / "mlflow-server.log").read_text()[-2000:]
        assert time.time() < deadline, "mlflow server did not start"
        time.sleep(1)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL the server's whole process group (gunicorn/uvicorn workers included)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_lost_tracking_server_says_how_to_resume_and_resume_finishes_the_run(
        ray_local, workdir, monkeypatch, capsys):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(port, workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("GENBENCH_FAULT", PAUSE_AFTER_25.format(15))
    killed = {}

    def kill_server_during_the_pause():
        try:
            killed["run_id"] = wait_until_paused(uri)
        finally:
            stop(server)

    killer = threading.Thread(target=kill_server_during_the_pause, daemon=True)
    killer.start()
    try:
        code = main([*ARGS, "--set", "train.max_failures=0"])  # fail fast: no group restarts
    finally:
        killer.join(timeout=60)
        stop(server)
    err = capsys.readouterr().err
    run_id = killed["run_id"]
    assert code == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"genbench: lost the MLflow tracking server at {uri} "
                           f"(connection refused"), last
    assert last.endswith(f"its checkpoint of step 20 is kept: genbench train --resume {run_id}")

    monkeypatch.delenv("GENBENCH_FAULT")
    wait_for_free_cpus(ray_local)
    server = start_mlflow_server(port, workdir)   # the server is back, with its store
    try:
        assert main(["train", "--resume", run_id]) == 0, capsys.readouterr().err[-3000:]
        check_resumed(uri, run_id)
    finally:
        stop(server)

"""pipeline/launch.py: what the user has is never lost. A run stopped by Ctrl-C or by a lost
tracking server says how to continue (`genbench train --resume RUN_ID`), keeps its checkpoints,
and `--resume` finishes it in the same MLflow run with one metric point per logged step.

The stop lands at a known step: GENBENCH_FAULT pauses rank 0 after step 25 (pipeline/faults.py),
once the checkpoint of step 20 is registered, and the test acts when the run's fault tag shows
the pause began. The Ctrl-C test uses the session's Ray; the tracking-outage tests start a
`mlflow server` on 127.0.0.1 and kill it, and their `genbench train` starts a Ray of its own, so
that its workers see the test's GENBENCH_SPOOL and GENBENCH_TRACKING_OUTAGE_S."""
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
from pipeline.train import FAULT_TAG, RESUMED_TAG

pytestmark = [pytest.mark.slow, pytest.mark.fault]  # make test-faults

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


def spool_records(directory: Path) -> int:
    """How many records a spool holds (0 when there is none)."""
    try:
        return len((directory / "records.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def own_ray_env(uri: str, spool_root: Path, **extra: str) -> dict:
    """The environment of a `genbench train` that starts a Ray of its own, so that its workers
    see GENBENCH_SPOOL and GENBENCH_TRACKING_OUTAGE_S (the session's Ray does not)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GENBENCH_SPOOL": str(spool_root), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def test_logger_waits_out_an_outage_and_sends_its_spool_in_order(workdir):
    """No Ray: a RunLogger and the driver's set_tags against a real server that goes away. While
    it is down, what is queued goes to the spool on disk and flush() waits (a checkpoint is not
    registered before its points are stored); once it is back on the same port and store, the
    spool is sent in order, each point once, and deleted."""
    from pipeline.tracking import RunLogger

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(port, workdir)
    try:
        run_id = tracking.start_run("L", "r", {}, {}, uri=uri)
        logger = RunLogger(run_id, uri, outage_s=300, spool_root=workdir / "spool")
        logger.metrics({"loss": 1.0}, step=10)
        logger.flush()
        stop(server)
        logger.metrics({"loss": 2.0}, step=20)
        logger.figure_png(b"\x89PNG grid", "samples/step_0000020.png")
        logger.metrics({"loss": 3.0}, step=30)
        flushed, tagged = threading.Event(), threading.Event()
        threading.Thread(target=lambda: (logger.flush(), flushed.set()), daemon=True).start()
        threading.Thread(target=lambda: (tracking.set_tags(run_id, {"t": "v"}, uri, budget_s=300),
                                         tagged.set()), daemon=True).start()
        directory = workdir / "spool" / run_id
        deadline = time.time() + 60
        while spool_records(directory) < 3:
            assert time.time() < deadline, "the queued records never reached the spool"
            time.sleep(0.2)
        logger.metrics({"loss": 4.0}, step=40)   # queued during the outage: spooled behind
        time.sleep(3)
        assert not flushed.is_set() and not tagged.is_set()
        assert spool_records(directory) == 4
        server = start_mlflow_server(port, workdir)   # back, with its store
        assert flushed.wait(120) and tagged.wait(120)
        logger.close()
        c = MlflowClient(uri)
        assert sorted((m.step, m.value) for m in c.get_metric_history(run_id, "loss")) == \
            [(10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)]
        assert tracking.list_artifacts(run_id, "samples", uri) == ["samples/step_0000020.png"]
        assert c.get_run(run_id).data.tags["t"] == "v"
        assert not directory.exists()
    finally:
        stop(server)


def test_tracking_server_down_for_90_s_is_waited_out(workdir):
    """Must-show 2: the server is killed while rank 0 pauses after step 25 and comes back 90 s
    later on the same port and store. Meanwhile the run goes on: its points go to the spool,
    Ray's upload thread waits to register the checkpoint of step 30, and the worker group is
    never restarted. The run ends FINISHED (exit 0), one point per logged step, no gap, and the
    spool is gone."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    spool_root = workdir / "spool"
    server = start_mlflow_server(port, workdir)
    env = own_ray_env(uri, spool_root, GENBENCH_FAULT=PAUSE_AFTER_25.format(5))
    proc = subprocess.Popen([*GENBENCH, *ARGS], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        run_id = wait_until_paused(uri, proc=proc)
        stop(server)
        down_since = time.time()
        while spool_records(spool_root / run_id) == 0:  # the run went on, into the spool
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() - down_since < 80, "nothing was spooled during the outage"
            time.sleep(0.5)
        time.sleep(max(0.0, down_since + 90 - time.time()))
        assert proc.poll() is None, "the run ended while the server was down"
        server = start_mlflow_server(port, workdir)   # back, with its store
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        run = MlflowClient(uri).get_run(run_id)
        assert run.info.status == "FINISHED"
        assert RESUMED_TAG not in run.data.tags   # waited out: the workers never restarted
        for key in ("mse", "images_per_s"):
            steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]
            assert sorted(steps) == list(range(10, STEPS + 1, 10)), (key, steps)
        assert not (spool_root / run_id).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop(server)


def test_lost_tracking_server_past_the_budget_stops_with_the_spool_and_resume_finishes(workdir):
    """Past the outage budget (GENBENCH_TRACKING_OUTAGE_S=5 here; train.tracking_outage_s,
    default 10 minutes) the run stops with one line that names the spool, the replay command
    and the resume command; the replay sends the spooled points and marks the run FAILED; the
    resume finishes it with one point per logged step."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    spool_root = workdir / "spool"
    server = start_mlflow_server(port, workdir)
    env = own_ray_env(uri, spool_root, GENBENCH_FAULT=PAUSE_AFTER_25.format(5),
                      GENBENCH_TRACKING_OUTAGE_S="5")
    proc = subprocess.Popen([*GENBENCH, *ARGS, "--set", "train.max_failures=0"], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = wait_until_paused(uri, proc=proc)
        stop(server)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop(server)
    assert proc.returncode == 1, err[-3000:]
    directory = spool_root / run_id
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"genbench: lost the MLflow tracking server at {uri} "
                           f"(connection refused"), last
    assert f"genbench tracking replay {directory}" in last, last
    assert last.endswith(f"its checkpoint of step 20 is kept: genbench train --resume {run_id}")
    assert spool_records(directory) > 0

    server = start_mlflow_server(port, workdir)   # the server is back, with its store
    try:
        replay = subprocess.run([*GENBENCH, "tracking", "replay", str(directory)], cwd=workdir,
                                env=env, capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr[-3000:]
        c = MlflowClient(uri)
        assert c.get_run(run_id).info.status == "FAILED"
        assert 30 in [m.step for m in c.get_metric_history(run_id, "mse")]  # from the spool
        assert not directory.exists()
        resume = subprocess.run([*GENBENCH, "train", "--resume", run_id], cwd=workdir,
                                env={**env, "GENBENCH_FAULT": ""}, capture_output=True,
                                text=True, timeout=300)
        assert resume.returncode == 0, resume.stderr[-3000:]
        check_resumed(uri, run_id)
    finally:
        stop(server)

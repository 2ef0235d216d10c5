"""Stopped the way clusters stop things: SIGTERM (timeout, Slurm, Kubernetes, spot reclaims) ends
`genbench train` like Ctrl-C (run KILLED with its points, the resume command, exit 143, no
stack dump), and after any ending, a SIGKILL of the driver included, no process of the run or
of the local Ray that genbench started is left on the machine.

Each test runs a real `genbench train` that starts its own local Ray (no RAY_ADDRESS), held at a
known step by a deterministic pause (GENBENCH_FAULT), so the signal always lands mid-run."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from mlflow.tracking import MlflowClient

from genbench.cli import main
from pipeline.faults import ENV
from pipeline.train import FAULT_TAG, RESUMED_TAG

pytestmark = [pytest.mark.slow, pytest.mark.fault]  # make test-faults

TINY = ["--model", "ae", "--workers", "2", "--set", "ae.width=8", "--set", "ae.latent_dim=8",
        "--set", "train.batch_size=16", "--set", "train.log_every=10",
        "--set", "train.eval_every=1000", "--set", "train.checkpoint_every=20",
        "--set", "train.checkpoint_min_interval_s=0"]


def paused_run(workdir, uri: str, experiment: str):
    """A `genbench train` on its own local Ray whose rank 0 pauses after step 45 (checkpoint
    at 40), once the pause began: (process, run id, the pids of its descendants)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"MLFLOW_TRACKING_URI": uri, ENV: "rank=0,step=45,action=pause,seconds=300"})
    proc = subprocess.Popen([sys.executable, "-m", "genbench", "train", *TINY, "--steps", "60",
                             "--experiment", experiment], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client, deadline = MlflowClient(uri), time.time() + 240
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the worker never reached its pause"
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and FAULT_TAG in runs[0].data.tags:
            break
        time.sleep(0.3)
    return proc, runs[0].info.run_id, descendants(proc.pid)


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(processes: list[psutil.Process], timeout: float = 40) -> None:
    """Every process (pid reuse ruled out by psutil's start-time check) ends within timeout."""
    deadline = time.time() + timeout
    while True:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        if time.time() > deadline:
            names = []
            for p in alive:
                try:
                    names.append(f"{p.pid} {p.name()} {' '.join(p.cmdline())[:80]}")
                except psutil.Error:
                    pass
            pytest.fail("left behind: " + "; ".join(names))
        time.sleep(0.5)


def test_sigterm_stops_the_run_like_ctrl_c(ray_local, workdir, mlflow_uri, capsys):
    proc, run_id, family = paused_run(workdir, mlflow_uri, "T")
    assert any("raylet" in p.name() or "gcs_server" in p.name() for p in family), \
        "the driver did not start its own Ray"
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert time.time() - t0 < 30
    assert "*** SIGTERM received" not in err and "Traceback" not in err, err[-3000:]
    assert f"terminated (SIGTERM); its checkpoint of step 40 is kept: genbench train " \
           f"--resume {run_id}" in err
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run_id, "mse")] == [10, 20, 30, 40]
    assert_all_gone(family)

    code = main(["train", "--resume", run_id])  # on the session's Ray
    assert code == 0, capsys.readouterr().err[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[RESUMED_TAG] == "40"
    assert sorted(m.step for m in client.get_metric_history(run_id, "mse")) == \
        [10, 20, 30, 40, 50, 60]


def test_a_killed_driver_leaves_no_ray_process(workdir, mlflow_uri):
    """SIGKILL gives the driver no chance to stop its Ray: genbench's watchdog
    (pipeline/reaper.py) ends what is left."""
    proc, _, family = paused_run(workdir, mlflow_uri, "K")
    proc.kill()
    proc.communicate(timeout=60)
    assert_all_gone(family)

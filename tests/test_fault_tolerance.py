"""A killed training worker resumes from the last checkpoint in the same MLflow run; a killed
driver's run continues with `genbench train --resume RUN_ID`."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import checkpoint as ckpt
from pipeline.cli import main
from pipeline.launch import RUN_DIR_TAG, find_latest_checkpoint

pytestmark = pytest.mark.slow

STEPS = 100
GENBENCH = ([str(Path(sys.executable).parent / "genbench")]
            if (Path(sys.executable).parent / "genbench").is_file()
            else [sys.executable, "-m", "pipeline.cli"])
# Every 10 steps a metric point and a checkpoint; batch 64 keeps the run going while we kill.
ARGS = ["train", "--model", "ae", "--workers", "2", "--steps", str(STEPS),
        "--set", "ae.width=8", "--set", "ae.latent_dim=8", "--set", "train.batch_size=64",
        "--set", "train.log_every=10", "--set", "train.checkpoint_every=10",
        "--set", "train.eval_every=1000"]


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("_")[-1])
                  for p in workdir.glob("ray_results/*/checkpoint_*/checkpoint.pt"))


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"genbench exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def the_only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, f"{len(runs)} runs in {experiment}; a restart must not open another"
    return client, runs[0]


def check_finished(client: MlflowClient, run_id: str, tmp_path: Path) -> list:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "mse")
    assert max(m.step for m in history) == STEPS
    payload = ckpt.load(client.download_artifacts(run_id, "checkpoint/checkpoint.pt",
                                                  str(tmp_path / "dl")))
    assert payload["step"] == STEPS and payload["mlflow_run_id"] == run_id
    return history


def test_killed_worker_resumes_from_last_checkpoint(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    pidfile = tmp_path / "pids"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=uri, GENBENCH_WORKER_PIDFILE=str(pidfile))
    proc = subprocess.Popen([*GENBENCH, *ARGS, "--experiment", "FT"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The second checkpoint: by then Ray has surely registered the first.
        wait_for(lambda: len(checkpoint_steps(tmp_path)) >= 2 and pidfile.is_file(), proc,
                 "the second checkpoint")
        seen = checkpoint_steps(tmp_path)[-1]
        worker_pid = int(pidfile.read_text().split()[0])
        killed_at = time.time()
        os.kill(worker_pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=500)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert seen < STEPS, "the run ended before the worker was killed"

    pids = pidfile.read_text().split()
    assert len(set(pids)) >= 2 and pids[0] == str(worker_pid), "no new worker group started"

    started = re.search(r"MLflow run ([0-9a-f]{32})", err).group(1)
    client, run = the_only_run(uri, "FT")
    assert run.info.run_id == started and f"MLflow run    {started}" in out
    history = check_finished(client, started, tmp_path)
    # After the kill the new workers continue from a checkpoint (10, 20, ... up to the last one
    # seen), never from step 0: their first metric point is after it, not step 10 again.
    after = sorted(m.step for m in history if m.timestamp > killed_at * 1000)
    assert after and 20 <= after[0] <= seen + 10, (after, seen)
    assert after[-1] == STEPS


def test_resume_an_interrupted_run(ray_local, workdir, mlflow_uri, capsys):
    """The driver dies (SIGKILL) after a checkpoint; --resume RUN_ID finishes the same run."""
    address = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    proc = subprocess.Popen([*GENBENCH, *ARGS, "--experiment", "R", "--address", address],
                            cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: checkpoint_steps(workdir), proc, "the first checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    client, run = the_only_run(mlflow_uri, "R")
    run_id = run.info.run_id
    assert run.info.status == "RUNNING"  # nobody closed it: the driver died
    latest = find_latest_checkpoint(run.data.tags[RUN_DIR_TAG])
    resumed_from = ckpt.load(latest)["step"]
    assert 10 <= resumed_from < STEPS

    resumed_at = time.time()
    code = main(["train", "--resume", run_id, "--experiment", "R"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert f"MLflow run    {run_id}" in out and f"{STEPS} steps" in out
    client, run = the_only_run(mlflow_uri, "R")
    assert run.info.run_id == run_id
    history = check_finished(client, run_id, workdir)
    after = sorted(m.step for m in history if m.timestamp > resumed_at * 1000)
    assert after[0] == resumed_from + 10 and after[-1] == STEPS

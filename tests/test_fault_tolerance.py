"""A killed training worker resumes from the last checkpoint in the same MLflow run; a killed
driver's run continues with `genbench train --resume RUN_ID`. Both use the session's Ray."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import checkpoint as ckpt
from genbench.cli import main
from pipeline.launch import RUN_DIR_TAG, find_latest_checkpoint

pytestmark = pytest.mark.slow

STEPS = 60
GENBENCH = [sys.executable, "-m", "genbench"]
# A metric point every 10 steps, a checkpoint every 20; batches of 256 keep the run going for
# some seconds after the first checkpoint, so the kill lands mid-run.
ARGS = ["train", "--model", "ae", "--workers", "2", "--steps", str(STEPS),
        "--set", "ae.width=8", "--set", "ae.latent_dim=8", "--set", "train.batch_size=256",
        "--set", "train.log_every=10", "--set", "train.checkpoint_every=20",
        "--set", "train.eval_every=1000"]


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("_")[-1])
                  for p in workdir.glob("ray_results/*/checkpoint_*/checkpoint.pt"))


def registered_checkpoint_step(workdir: Path) -> int | None:
    """The step of the latest checkpoint Ray Train has registered (what a restarted worker group
    gets from get_checkpoint()), from its checkpoint manager's snapshot in the run directory.
    A checkpoint folder alone is not enough: Ray registers it a moment after it is written."""
    for snapshot in workdir.glob("ray_results/*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except ValueError:  # being rewritten
            return None
        if latest:
            return int(latest["checkpoint_dir_name"].split("_")[-1])
    return None


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


def test_killed_worker_resumes_from_last_checkpoint(ray_local, worker_pidfile, workdir,
                                                    mlflow_uri, capsys):
    """`genbench train` (in-process, on the shared Ray) while a thread SIGKILLs rank 0."""
    def pids() -> list[str]:
        return worker_pidfile.read_text().split() if worker_pidfile.is_file() else []

    earlier = len(pids())  # rank 0 of each earlier run on this Ray appended too
    killed: dict = {}

    def kill_rank0_after_a_registered_checkpoint():
        deadline = time.time() + 400
        while time.time() < deadline:
            registered, new = registered_checkpoint_step(workdir), pids()[earlier:]
            if registered and new:
                os.kill(int(new[0]), signal.SIGKILL)
                killed.update(pid=int(new[0]), registered=registered, at=time.time(),
                              on_disk=checkpoint_steps(workdir)[-1])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank0_after_a_registered_checkpoint, daemon=True)
    killer.start()
    code = main([*ARGS, "--experiment", "FT"])
    killer.join(timeout=1)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert killed, "the run ended before a worker was killed"
    assert killed["registered"] < STEPS

    restarted = pids()[earlier:]
    assert len(set(restarted)) >= 2 and restarted[0] == str(killed["pid"]), \
        "no new worker group started"

    started = re.search(r"MLflow run ([0-9a-f]{32})", err).group(1)
    client, run = the_only_run(mlflow_uri, "FT")
    assert run.info.run_id == started and f"MLflow run    {started}" in out
    history = check_finished(client, started, workdir)
    # The new workers continue from the last checkpoint Ray registered (or a later one written
    # before the kill), not from step 0: their first metric point comes right after it
    # (from step 0 it would be step 10 again).
    after = sorted(m.step for m in history if m.timestamp > killed["at"] * 1000)
    assert after and killed["registered"] + 10 <= after[0] <= killed["on_disk"] + 10, \
        (after, killed)
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
    # Ray ends the dead driver's workers: wait until their CPUs are free, so no checkpoint is
    # still being written when the test reads the latest one.
    deadline = time.time() + 120
    while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]:
        assert time.time() < deadline, "the killed driver's workers never ended"
        time.sleep(0.2)
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

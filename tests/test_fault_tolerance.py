"""Fault tolerance with deterministic faults (GENBENCH_FAULT, see pipeline/faults.py): a worker
killed at a known step resumes from the last checkpoint in the same MLflow run; a driver killed
while a worker pauses at a known step is continued with `genbench train --resume RUN_ID`. Either
way every metric ends with exactly one point per logged step. Both use the session's Ray."""
import glob
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
from genbench.cli import main
from pipeline.faults import ENV
from pipeline.resume import RUN_DIR_TAG
from pipeline.trainer import find_latest_checkpoint
from pipeline.train import FAULT_TAG, RESUMED_TAG

pytestmark = pytest.mark.slow

GENBENCH = [sys.executable, "-m", "genbench"]
TINY = ["--model", "ae", "--workers", "2", "--set", "ae.width=8", "--set", "ae.latent_dim=8",
        "--set", "train.batch_size=16", "--set", "train.log_every=10",
        "--set", "train.eval_every=1000", "--set", "train.checkpoint_min_interval_s=0"]
TRAIN_KEYS = ("mse", "images_per_s", "lr", "epoch", "peak_memory_mb")


def the_only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, f"{len(runs)} runs in {experiment}; a restart must not open another"
    return client, runs[0]


def check_exactly_once(client: MlflowClient, run_id: str, steps: int, log_every: int) -> None:
    """Every training metric has one point at each logged step, validation one at the end."""
    logged = list(range(log_every, steps + 1, log_every))
    for key in TRAIN_KEYS:
        got = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert got == logged, f"{key}: points at {got}, expected one at each of {logged}"
    for key in ("val_mse", "val_loss"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [steps]


def check_finished(client: MlflowClient, run_id: str, steps: int, tmp_path: Path) -> None:
    assert client.get_run(run_id).info.status == "FINISHED"
    payload = ckpt.load(client.download_artifacts(run_id, "checkpoint/checkpoint.pt",
                                                  str(tmp_path / "dl")))
    assert payload["step"] == steps and payload["mlflow_run_id"] == run_id


def test_killed_worker_resumes_from_last_checkpoint(ray_local, workdir, mlflow_uri, capsys,
                                                    monkeypatch):
    """Rank 1 is SIGKILLed right after step 150 of 300 (checkpoints every 100): Ray restarts the
    group from step 100, the run finishes at 300 in the same MLflow run, and the points the
    first group logged after step 100 are not logged twice."""
    fault = "rank=1,step=150,action=kill"
    monkeypatch.setenv(ENV, fault)
    code = main(["train", *TINY, "--steps", "300", "--set", "train.checkpoint_every=100",
                 "--experiment", "FT"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    started = re.search(r"MLflow run ([0-9a-f]{32})", err).group(1)
    client, run = the_only_run(mlflow_uri, "FT")
    assert run.info.run_id == started and f"MLflow run    {started}" in out
    tags = run.data.tags
    assert tags[FAULT_TAG] == fault, "the fault never fired"
    assert tags[RESUMED_TAG] == "100", "the restarted group did not start at the last checkpoint"
    check_finished(client, started, 300, workdir)
    check_exactly_once(client, started, 300, 10)
    # The driver's progress lines came from rank 0 (no MLflow polling), the last one at the end.
    assert "  step 300/300 | mse " in err


def test_resume_an_interrupted_run(ray_local, workdir, mlflow_uri, capsys):
    """The driver is SIGKILLed while rank 0 pauses after step 45 (checkpoints every 20);
    --resume RUN_ID finishes the same run from step 40."""
    address = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri,
           ENV: "rank=0,step=45,action=pause,seconds=300"}
    proc = subprocess.Popen([*GENBENCH, "train", *TINY, "--steps", "60", "--set",
                             "train.checkpoint_every=20", "--experiment", "R",
                             "--address", address],
                            cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        client = MlflowClient(mlflow_uri)
        while True:  # the tag is set once the pause begins
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the worker never reached the pause"
            exp = client.get_experiment_by_name("R")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and FAULT_TAG in runs[0].data.tags:
                break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Ray ends the dead driver's workers: wait until their CPUs are free.
    deadline = time.time() + 120
    while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]:
        assert time.time() < deadline, "the killed driver's workers never ended"
        time.sleep(0.2)
    client, run = the_only_run(mlflow_uri, "R")
    run_id = run.info.run_id
    assert run.info.status == "RUNNING"  # nobody closed it: the driver died
    assert ckpt.load(find_latest_checkpoint(run.data.tags[RUN_DIR_TAG]))["step"] == 40
    assert max(m.step for m in client.get_metric_history(run_id, "mse")) == 40

    code = main(["train", "--resume", run_id, "--experiment", "R"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert f"MLflow run    {run_id}" in out and "60 steps" in out
    client, run = the_only_run(mlflow_uri, "R")
    assert run.data.tags[RESUMED_TAG] == "40"
    check_finished(client, run_id, 60, workdir)
    check_exactly_once(client, run_id, 60, 10)


def test_checkpoints_sooner_than_the_min_interval_are_skipped_on_every_rank(ray_local, workdir,
                                                                            mlflow_uri, capsys):
    """checkpoint_every=1 at hundreds of steps a second, 2 workers, the default
    train.checkpoint_min_interval_s (0.5 s): Ray Train takes one report per poll, so reporting
    every step would queue ~100 reports behind the run's end. Steps within 0.5 s of the last
    checkpoint are skipped, by rank 0's clock on both ranks (a report is a collective: a
    mismatch would hang); the first and the last step keep theirs, and every step is logged."""
    steps = 100
    default_spacing = TINY[:-2]  # TINY less its checkpoint_min_interval_s=0
    code = main(["train", *default_spacing, "--steps", str(steps), "--experiment", "S",
                 "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=1000"])
    assert code == 0, capsys.readouterr().err[-3000:]
    client, run = the_only_run(mlflow_uri, "S")
    assert run.data.params["train.checkpoint_min_interval_s"] == "0.5"
    files = glob.glob(f"{run.data.tags[RUN_DIR_TAG]}*/checkpoint_*/{ckpt.FILENAME}")
    saved = sorted(ckpt.load(p)["step"] for p in files)
    history = sorted(client.get_metric_history(run.info.run_id, "mse"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, steps + 1))
    span = (history[-1].timestamp - history[0].timestamp) / 1000
    assert saved[0] == 1 and saved[-1] == steps
    # at most one per 0.5 s after the first, and the last (whole-ms timestamps: one spare)
    assert len(saved) <= 3 + span / 0.5, (saved, span)
    assert len(saved) < steps / 2, saved

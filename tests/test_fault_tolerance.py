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
fault_test = pytest.mark.fault  # make test-faults

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


@fault_test
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


@fault_test
def test_worker_killed_before_the_first_checkpoint(ray_local, workdir, mlflow_uri, capsys,
                                                   monkeypatch):
    """Rank 1 is SIGKILLed at step 150 of 300 with no checkpoint yet: Ray restarts the group
    from step 0, and the 15 points per metric the first group logged are not logged again."""
    monkeypatch.setenv(ENV, "rank=1,step=150,action=kill")
    code = main(["train", *TINY, "--steps", "300", "--set", "train.checkpoint_every=1000",
                 "--experiment", "F0"])
    assert code == 0, capsys.readouterr().err[-3000:]
    client, run = the_only_run(mlflow_uri, "F0")
    assert FAULT_TAG in run.data.tags, "the fault never fired"
    assert RESUMED_TAG not in run.data.tags  # no checkpoint to start from: step 0 again
    check_finished(client, run.info.run_id, 300, workdir)
    check_exactly_once(client, run.info.run_id, 300, 10)


@fault_test
def test_stalled_rank_restarts_the_group(ray_local, workdir, mlflow_uri, capsys, monkeypatch):
    """Rank 1 is SIGSTOPped right after step 150 of 300 (checkpoints every 100): alive but
    silent, it holds rank 0 in the next gradient all-reduce until train.collective_timeout_s
    (10 s here; Ray's own default is 30 minutes) ends it. Ray restarts the group from step 100
    and the run finishes, every point once."""
    monkeypatch.setenv(ENV, "rank=1,step=150,action=stop")
    t0 = time.time()
    code = main(["train", *TINY, "--steps", "300", "--set", "train.checkpoint_every=100",
                 "--set", "train.collective_timeout_s=10", "--experiment", "ST"])
    assert code == 0, capsys.readouterr().err[-3000:]
    client, run = the_only_run(mlflow_uri, "ST")
    assert FAULT_TAG in run.data.tags, "the fault never fired"
    assert run.data.tags[RESUMED_TAG] == "100"
    check_finished(client, run.info.run_id, 300, workdir)
    check_exactly_once(client, run.info.run_id, 300, 10)
    # Ray's default would hold the group for 30 minutes; the whole run takes 2-5 minutes, more
    # when CI runs three fault tests on 2 cores (275 s there once), so 900 s tells them apart.
    assert time.time() - t0 < 900


def kill_driver(proc: subprocess.Popen, ray_local) -> None:
    """SIGKILL a `genbench train` driver on the session's Ray and wait until Ray has ended its
    workers (their CPUs are free again)."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 120
    while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]:
        assert time.time() < deadline, "the killed driver's workers never ended"
        time.sleep(0.2)


def start_driver(ray_local, workdir, mlflow_uri, experiment: str, steps: int,
                 fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    env.pop(ENV, None)
    if fault:
        env[ENV] = fault
    return subprocess.Popen([*GENBENCH, "train", *TINY, "--steps", str(steps), "--set",
                             "train.checkpoint_every=20", "--experiment", experiment,
                             "--address", ray_local.get_runtime_context().gcs_address],
                            cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, f"{what} never happened"
        time.sleep(0.2)


@fault_test
def test_resume_an_interrupted_run_whose_newest_checkpoint_is_torn(ray_local, workdir,
                                                                   mlflow_uri, capsys):
    """The driver is SIGKILLed while rank 0 pauses after step 45 (checkpoints every 20), and
    the newest checkpoint (step 40) is cut in half, as a kill mid-copy leaves it: --resume
    RUN_ID says it skips it and finishes the same run from step 20, every point once."""
    proc = start_driver(ray_local, workdir, mlflow_uri, "R", 60,
                        fault="rank=0,step=45,action=pause,seconds=300")
    client = MlflowClient(mlflow_uri)

    def paused() -> bool:  # the tag is set once the pause begins
        exp = client.get_experiment_by_name("R")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return bool(runs) and FAULT_TAG in runs[0].data.tags
    wait_for(proc, paused, "the worker's pause")
    kill_driver(proc, ray_local)
    client, run = the_only_run(mlflow_uri, "R")
    run_id = run.info.run_id
    assert run.info.status == "RUNNING"  # nobody closed it: the driver died
    newest = find_latest_checkpoint(run.data.tags[RUN_DIR_TAG]) / ckpt.FILENAME
    assert ckpt.load(newest)["step"] == 40
    assert max(m.step for m in client.get_metric_history(run_id, "mse")) == 40
    whole = newest.read_bytes()
    newest.write_bytes(whole[:len(whole) // 2])

    code = main(["train", "--resume", run_id, "--experiment", "R"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert f"skipped checkpoint(s) that do not load: {newest.parent.name} (corrupt)" in err
    assert f"MLflow run    {run_id}" in out and "60 steps" in out
    client, run = the_only_run(mlflow_uri, "R")
    assert run.data.tags[RESUMED_TAG] == "20"
    check_finished(client, run_id, 60, workdir)
    check_exactly_once(client, run_id, 60, 10)


@fault_test
@pytest.mark.parametrize("seed", [1, 2])
def test_driver_killed_at_a_random_moment_then_resumed(ray_local, workdir, mlflow_uri, capsys,
                                                       seed):
    """The driver is SIGKILLed at a random moment after its first checkpoint (mid-step, mid-log,
    mid-copy: wherever it falls); --resume finishes the run with one point per logged step."""
    import random

    proc = start_driver(ray_local, workdir, mlflow_uri, f"K{seed}", 400)
    client = MlflowClient(mlflow_uri)

    def checkpointed() -> bool:
        exp = client.get_experiment_by_name(f"K{seed}")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return bool(runs) and find_latest_checkpoint(runs[0].data.tags.get(RUN_DIR_TAG, "/-"))
    wait_for(proc, checkpointed, "the first checkpoint")
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    kill_driver(proc, ray_local)
    client, run = the_only_run(mlflow_uri, f"K{seed}")
    code = main(["train", "--resume", run.info.run_id, "--experiment", f"K{seed}"])
    assert code == 0, capsys.readouterr().err[-3000:]
    check_finished(client, run.info.run_id, 400, workdir)
    check_exactly_once(client, run.info.run_id, 400, 10)


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

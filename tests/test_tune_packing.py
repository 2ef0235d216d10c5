"""`genbench tune --trials-per-gpu N`: single-worker GPU trials each ask Ray for 1/N of a GPU,
so N of them train on one GPU at once, and a sweep never asks for more GPUs than the cluster
declares.

The end-to-end test runs a sweep on a Ray of its own that declares a GPU this machine does not
have (`ray start --num-gpus 1`): Ray schedules by the declared resources, and each trial, seeing
no CUDA device, trains on its CPU (tune/trial.py's _device). That Ray runs in a process group
this module starts and stops; the pytest process never connects to it (conftest's `ray_local`
is the session's own), and it never touches any other Ray instance (no `ray stop`)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from genbench.cli import main
from pipeline.config import Config
from pipeline.errors import ConfigError
from test_cluster import free_ports   # the 2-node cluster tests' port picker

BIN = Path(sys.executable).parent   # the venv's ray
TINY_VAE = ["--set", "vae.width=8", "--set", "vae.latent_dim=4", "--set", "train.batch_size=32"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("genbench: error: ")
    return err[0]


def all_runs(uri: str) -> list:
    c = MlflowClient(uri)
    return c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=1000)


# --- checked before Ray starts ------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["--trials-per-gpu", "2"], "add --gpu"),                                    # CPU trials
    (["--gpu", "--trials-per-gpu", "2", "--workers-per-trial", "2"],
     "use --workers-per-trial 1"),                                             # DDP trials
    (["--gpu", "--trials-per-gpu", "0"], "must be positive"),
    (["--resume", "some/sweep", "--trials-per-gpu", "2"], "drop --trials-per-gpu"),
])
def test_bad_trials_per_gpu_is_one_line_exit_2(argv, words, workdir, mlflow_uri, capsys):
    try:
        code = main(["tune", "--samples", "2", *argv])
    except SystemExit as exc:  # argparse's own check (a value that is not a positive number)
        code = exc.code
    assert code == 2
    assert words in one_line_error(capsys)
    assert not (workdir / "mlflow.db").exists() or not all_runs(mlflow_uri)


@pytest.mark.parametrize("argv, words", [
    (["--gpu", "--trials-per-gpu", "2"], "1/2 of a GPU asked for but the Ray cluster has 0 GPUs"),
    (["--gpu"], "1 GPU workers asked for but the Ray cluster has 0 GPUs"),   # launch's check
])
def test_gpu_sweep_on_a_cluster_without_gpus_is_unsatisfiable(argv, words, ray_local, workdir,
                                                              mlflow_uri, capsys):
    """The session's Ray declares no GPU: less than one trial's share is one line, exit 2."""
    assert main(["tune", "--samples", "2", *argv]) == 2
    assert words in one_line_error(capsys)
    assert not all_runs(mlflow_uri)  # refused before the parent run is opened


@pytest.mark.parametrize("cpus, gpus, workers, trials_per_gpu, expected", [
    (8, 1, 1, 1, 1),     # a whole GPU per trial (the default)
    (8, 1, 1, 2, 2),     # two halves of one GPU
    (8, 1, 1, 3, 3),     # thirds: 0.3333 each, three fit in one GPU
    (8, 2, 1, 3, 6),
    (3, 2, 1, 4, 3),     # the CPUs bind first
    (8, 0.5, 1, 2, 1),   # a cluster that declares half a GPU holds one half-GPU trial
    (8, 4, 2, 1, 2),     # 2-worker trials: a whole GPU per rank
])
def test_packing_concurrency_never_asks_for_more_gpus_than_declared(monkeypatch, cpus, gpus,
                                                                    workers, trials_per_gpu,
                                                                    expected):
    import ray

    import pipeline.cluster
    from tune.spec import gpu_share
    from tune.sweep import concurrency

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": cpus, "GPU": gpus})
    monkeypatch.setattr(pipeline.cluster, "multi_node", lambda: False)
    cfg = Config.from_dict({"model": "vae", "train": {"gpu": True, "workers": workers,
                                                      "cpus_per_worker": 1}})
    fit = concurrency(cfg, trials_per_gpu)
    assert fit == expected
    assert fit * workers * gpu_share(trials_per_gpu) <= gpus   # what Ray is asked for at once


def test_packing_shares_cut_to_rays_resolution():
    from tune.spec import gpu_share

    assert gpu_share(1) == 1 and gpu_share(2) == 0.5 and gpu_share(4) == 0.25
    assert gpu_share(3) == 0.3333 and 3 * gpu_share(3) <= 1   # Ray counts in 1/10000 steps
    assert gpu_share(7) * 7 <= 1


def test_packing_setting_of_a_spec_saved_before_it_defaults_to_a_whole_gpu():
    from tune.spec import SweepSpec

    cfg = Config.from_dict({"model": "vae", "train": {"steps": 40}}).to_dict()
    raw = dict(user_config=cfg, trial_config=cfg, space={"vae.beta": {"uniform": [1, 2]}},
               metric="val_bpd", mode="min", scheduler="asha", search="random", samples=2,
               steps=40, interval=4, experiment="E", tracking_uri="sqlite:///m.db",
               fid_samples=500)
    assert SweepSpec.from_json(json.dumps(raw)).trials_per_gpu == 1   # an older genbench's spec
    assert SweepSpec.from_json(json.dumps({**raw, "trials_per_gpu": 4})).trials_per_gpu == 4
    with pytest.raises(ConfigError, match="trials_per_gpu"):
        SweepSpec.from_json(json.dumps({**raw, "trials_per_gpu": "4"}))


# --- end to end, on a Ray that declares a GPU -------------------------------------------------


def stop_session(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM `ray start --block` (it stops its own children), then SIGKILL whatever is left
    in the process group it was started in."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(5)


@pytest.fixture
def gpu_ray(tmp_path):
    """A 1-node Ray that declares 1 GPU and 3 CPUs, and the environment its clients need: with
    1 CPU per trial the CPUs would hold 3 trials at once, so the GPU is what limits them. Token
    authentication with a token of its own (Ray's default token is one per user, in ~/.ray)."""
    # Ray's unix socket paths must stay short: its temp dir lives directly under /tmp.
    ray_tmp = Path(tempfile.mkdtemp(prefix="gbpack-", dir="/tmp"))
    token_file = tmp_path / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI",
                        "CUDA_VISIBLE_DEVICES")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               RAY_USAGE_STATS_ENABLED="0", RAY_TRAIN_V2_ENABLED="1")
    gcs, client, agent, agent_grpc, runtime_env, metrics = free_ports(6)
    argv = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "3", "--num-gpus", "1",
            "--node-ip-address", "127.0.0.1", "--port", str(gcs),
            "--include-dashboard", "false", "--ray-client-server-port", str(client),
            "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
            "--temp-dir", str(ray_tmp), "--disable-usage-stats"]
    address_file = ray_tmp / "ray_current_cluster"
    head = None
    try:
        for attempt in range(2):
            # `ray start` gives its raylet a fixed 30 s to register: on 2 busy cores it can miss
            # that once (as in test_cluster); a second try starts afresh
            with open(tmp_path / f"ray-head{attempt}.log", "w") as log:
                head = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.time() + 120
            while not (address_file.is_file() and address_file.read_text().strip()) \
                    and head.poll() is None and time.time() < deadline:
                time.sleep(0.5)
            if head.poll() is None and address_file.is_file():
                break
            stop_session(head)
            assert not attempt, (tmp_path / f"ray-head{attempt}.log").read_text()[-3000:]
        yield address_file.read_text().strip(), env
    finally:
        if head is not None:
            stop_session(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def most_at_once(intervals: list[tuple[int, int]]) -> int:
    """The most intervals (start, end) that hold one moment in common."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))   # an end before a start at the same ms
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
@pytest.mark.fault  # make test-faults: a Ray cluster of its own, as test_cluster's
def test_packing_runs_two_half_gpu_trials_at_once_on_one_declared_gpu(gpu_ray, workdir,
                                                                       mlflow_uri):
    """3 trials, 1/2 GPU each, on a Ray that declares 1 GPU and 3 CPUs: two train at once (their
    MLflow runs overlap in time), never three (they would ask for 1.5 GPUs), and Tune asked
    for exactly 1 CPU and 0.5 GPU per trial."""
    from ray.tune import ExperimentAnalysis

    address, env = gpu_ray
    env = {**env, "MLFLOW_TRACKING_URI": mlflow_uri}
    cmd = [sys.executable, "-m", "genbench", "tune", "--address", address, "--model", "vae",
           "--samples", "3", "--steps", "10", "--scheduler", "fifo", "--gpu",
           "--trials-per-gpu", "2", *TINY_VAE, "--set", "data.val_fraction=0.02"]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "1 worker(s), 1/2 GPU each, 2 at a time" in proc.stderr, proc.stderr[-2000:]

    runs = all_runs(mlflow_uri)
    parent = next(r for r in runs if r.data.tags.get("genbench.kind") == "tune")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["tune.trials_per_gpu"] == "2"
    assert parent.data.params["train.gpu"] == "True"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    assert all(ch.data.tags["genbench.trial_status"] == "completed" for ch in children)
    intervals = [(ch.info.start_time, ch.info.end_time) for ch in children]
    assert most_at_once(intervals) == 2, intervals

    sweep_dir = parent.data.tags["genbench.tune_path"]
    for trial in ExperimentAnalysis(sweep_dir).trials:
        assert trial.placement_group_factory.required_resources == {"CPU": 1, "GPU": 0.5}

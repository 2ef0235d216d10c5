"""`genbench tune` end to end on the real stack: Ray Tune over the real training loop on
Fashion-MNIST, MLflow in a private sqlite store. Tiny nets and 40-step trials keep a 4-trial
sweep to about a minute on 2 contended cores."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from genbench.cli import main, make_parser
from genbench.options import build_config

TINY_VAE = ["--set", "vae.width=8", "--set", "vae.latent_dim=4", "--set", "train.batch_size=32"]
TINY_GAN = ["--set", "gan.width=8", "--set", "gan.latent_dim=8", "--set", "train.batch_size=32"]
TINY_AE = ["--set", "ae.width=8", "--set", "ae.latent_dim=4", "--set", "train.batch_size=32"]


def all_runs(uri: str) -> list:
    c = MlflowClient(uri)
    return c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=1000)


def sweep_runs(uri: str):
    runs = all_runs(uri)
    parents = [r for r in runs if r.data.tags.get("genbench.kind") == "tune"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def check_sweep(uri: str, keys: list[str], metric: str, samples: int = 4):
    """The MLflow side of a finished sweep; returns (parent, children, best config path)."""
    c = MlflowClient(uri)
    parent, children = sweep_runs(uri)
    assert parent.info.status == "FINISHED"
    assert len(children) == samples
    for child in children:
        status = child.data.tags["genbench.trial_status"]
        assert status in ("completed", "early_stopped")
        assert child.info.status == ("FINISHED" if status == "completed" else "KILLED")
        assert child.data.tags["genbench.kind"] == "tune-trial"
        history = c.get_metric_history(child.info.run_id, metric)
        assert len(history) >= 2 and len({m.step for m in history}) == len(history)  # per step
        assert "trial_seconds" in child.data.metrics
    assert any(ch.data.tags["genbench.trial_status"] == "completed" for ch in children)
    for key in keys:  # each sampled value recorded as a param, and really sampled
        values = {float(ch.data.params[key]) for ch in children}
        assert len(values) == samples
    top = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "best_config.yaml", "plots"} <= top
    plots = {a.path for a in c.list_artifacts(parent.info.run_id, "plots")}
    assert {f"plots/{metric}_vs_{k}.png" for k in keys} <= plots
    best_path = Path(parent.data.tags["genbench.tune_path"]) / "best_config.yaml"
    results = (best_path.parent / "results.csv").read_text().strip().splitlines()
    assert len(results) == samples + 1
    # the best config is the child with the lowest last metric, and `genbench train` takes it
    best_child = min(children, key=lambda ch: ch.data.metrics[metric])
    assert parent.data.tags["genbench.best_run_id"] == best_child.info.run_id
    args = make_parser().parse_args(["train", "--config", str(best_path), "--steps", "2"])
    cfg = build_config(args)
    for key in keys:
        section, name = key.split(".")
        assert getattr(cfg.family, name) == pytest.approx(float(best_child.data.params[key]))
    return parent, children, best_path


@pytest.mark.slow
def test_vae_sweep_records_parent_children_and_best_config(ray_local, workdir, mlflow_uri):
    ctrl_c = signal.getsignal(signal.SIGINT)
    rc = main(["tune", "--model", "vae", "--samples", "4", "--steps", "40", *TINY_VAE])
    assert rc == 0
    assert signal.getsignal(signal.SIGINT) is ctrl_c   # Tune's Ctrl-C handler does not outlive it
    parent, children, best = check_sweep(mlflow_uri, ["vae.beta", "vae.lr"], "val_bpd")
    assert parent.data.params["tune.scheduler"] == "asha"
    plots = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(parent.info.run_id, "plots")}
    assert "plots/rate_distortion.png" in plots
    assert yaml.safe_load(best.read_text())["vae"]["width"] == 8  # the sweep's fixed settings
    for child in children:
        assert 0.1 <= float(child.data.params["vae.beta"]) <= 10


@pytest.mark.slow
def test_two_worker_trials_searched_by_optuna(ray_local, workdir, mlflow_uri):
    """--workers-per-trial 2: each trial is a 2-worker TorchTrainer (DDP) reporting through
    Tune; --search optuna: Optuna's TPE proposes the values."""
    # 4 steps: 4 reports (a trial reports, validates and checkpoints every steps/10, at least 1)
    rc = main(["tune", "--model", "ae", "--samples", "2", "--steps", "4", "--scheduler", "fifo",
               "--workers-per-trial", "2", "--search", "optuna", *TINY_AE])
    assert rc == 0
    parent, children, _ = check_sweep(mlflow_uri, ["ae.lr"], "val_mse", samples=2)
    assert parent.data.params["tune.search"] == "optuna"
    for child in children:
        assert child.data.params["train.workers"] == "2"
        assert child.data.tags["genbench.trial_status"] == "completed"   # fifo: all run out
        assert 1e-4 <= float(child.data.params["ae.lr"]) <= 3e-3          # AE's TUNE_SPACE


@pytest.fixture
def tiny_domain_classifier(domain_classifier, monkeypatch):
    """The session's test domain classifier (the GAN's FID extractor)."""
    monkeypatch.setenv("GENBENCH_CACHE", str(domain_classifier))


@pytest.mark.slow
def test_gan_sweep_over_learning_rates_on_domain_fid(ray_local, workdir, mlflow_uri,
                                                     tiny_domain_classifier):
    rc = main(["tune", "--model", "gan", "--samples", "4", "--steps", "40", *TINY_GAN])
    assert rc == 0
    parent, children, _ = check_sweep(mlflow_uri, ["gan.lr_g", "gan.lr_d", "gan.beta1"],
                                      "val_fid_domain")
    assert parent.data.params["tune.metric"] == "val_fid_domain"
    for child in children:
        assert child.data.metrics["val_fid_domain"] > 0


class Lines(threading.Thread):
    """Collects a pipe's lines while the process runs."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.lines = pipe, []

    def run(self):
        for line in self.pipe:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.2)
        return False


@pytest.mark.slow
@pytest.mark.fault  # make test-faults
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_local, workdir,
                                                                      mlflow_uri, stop):
    """The sweep driver is stopped once a trial completed (Ctrl-C, or SIGKILL: no chance to
    close anything), then `tune --resume`d: the parent FINISHED, one child per trial, finished
    trials not run again, and every trial's steps logged once."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    env["RAY_ADDRESS"] = ray_local.get_runtime_context().gcs_address  # one Ray per session
    cmd = [sys.executable, "-m", "genbench", "tune", "--model", "vae", "--samples", "4",
           "--steps", "40", "--scheduler", "fifo", *TINY_VAE]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err = Lines(proc.stderr)
    err.start()
    try:
        assert err.wait_for("completed at step", timeout=300), "".join(err.lines)
        proc.send_signal(stop)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err.join(timeout=5)
    c = MlflowClient(mlflow_uri)
    parent, children = sweep_runs(mlflow_uri)
    if stop == signal.SIGINT:
        assert proc.returncode == 130, "".join(err.lines)
        assert any("genbench tune --resume" in line for line in err.lines)
        assert parent.info.status == "KILLED"
    else:
        assert parent.info.status == "RUNNING"  # nobody closed it: the driver died
        # Ray ends the dead driver's trials: wait until their CPUs are free.
        deadline = time.time() + 120
        while ray_local.available_resources().get("CPU", 0) < \
                ray_local.cluster_resources()["CPU"]:
            assert time.time() < deadline, "the killed driver's trials never ended"
            time.sleep(0.2)
    done_before = {ch.info.run_id: len(c.get_metric_history(ch.info.run_id, "val_bpd"))
                   for ch in children if ch.data.tags["genbench.trial_status"] == "completed"}
    assert 1 <= len(done_before) < 4

    rc = main(["tune", "--resume", parent.data.tags["genbench.tune_path"]])
    assert rc == 0
    parent, children = sweep_runs(mlflow_uri)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all(ch.data.tags["genbench.trial_status"] == "completed" for ch in children)
    for child in children:
        if child.info.run_id in done_before:  # not run again: one start, same history
            # (a SIGKILLed driver may not have saved Tune's state since the trial ended: Tune
            # then starts it again, from its last checkpoint, and it adds no point)
            if stop == signal.SIGINT:
                assert child.data.tags["genbench.trial_starts"] == "1"
            history = c.get_metric_history(child.info.run_id, "val_bpd")
            assert len(history) == done_before[child.info.run_id]
        for key in ("val_bpd", "images_per_s"):  # restarted trials repeat steps: logged once
            steps = [m.step for m in c.get_metric_history(child.info.run_id, key)]
            assert steps and len(steps) == len(set(steps)), (key, sorted(steps))
    assert (Path(parent.data.tags["genbench.tune_path"]) / "best_config.yaml").is_file()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("genbench: error: ")
    return err[0]


BAD_SPACES = {
    "empty": ("tune: {}\n", "empty"),
    "negative log bound": ("tune: {vae.beta: {loguniform: [-1, 10]}}\n", "above 0"),
    "reversed bounds": ("tune: {vae.lr: {uniform: [0.1, 0.01]}}\n", "below upper"),
    "unknown key": ("tune: {vae.depth: {uniform: [1, 4]}}\n", "unknown hyperparameter"),
    "unknown primitive": ("tune: {vae.beta: {gaussian: [0, 1]}}\n", "unknown sampling"),
    "not a primitive": ("tune: {vae.beta: 4}\n", "one sampling primitive"),
    "invalid values": ("tune: {vae.likelihood: {choice: [logistic, gaussian]}}\n",
                       "invalid config"),
}


@pytest.mark.parametrize("name", list(BAD_SPACES))
def test_bad_search_space_is_one_line_exit_2(name, workdir, mlflow_uri, capsys):
    text, words = BAD_SPACES[name]
    (workdir / "sweep.yaml").write_text("model: vae\n" + text)
    assert main(["tune", "--config", "sweep.yaml", "--samples", "2"]) == 2
    assert words in one_line_error(capsys)
    assert not (workdir / "mlflow.db").exists() or not all_runs(mlflow_uri)


@pytest.mark.parametrize("argv, words", [
    (["--samples", "0"], "--samples must be positive"),
    (["--samples", "-3"], "--samples must be positive"),
    (["--metric", "val_nope"], "unknown metric 'val_nope'"),
    (["--metric", "val_fid_domain"], "unknown metric"),       # a GAN metric on a VAE
    (["--resume", "no/such/sweep"], "not a genbench sweep"),
])
def test_bad_arguments_are_one_line_exit_2(argv, words, workdir, mlflow_uri, capsys):
    assert main(["tune", *argv]) == 2
    assert words in one_line_error(capsys)


def test_unsatisfiable_resources_are_one_line_exit_2(ray_local, workdir, mlflow_uri, capsys):
    assert main(["tune", "--workers-per-trial", "64", "--samples", "2"]) == 2
    assert "lower --workers-per-trial" in one_line_error(capsys)
    assert not all_runs(mlflow_uri)  # refused before the parent run is opened

"""Shared fixtures: one local Ray for the session, a private MLflow store, a temp working dir."""
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Ray Train V2 is the default in ray >= 2.51; pin it so the worker processes agree with the driver.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet test logs
# The session's local Ray is one machine: no preemption to watch (as genbench does when it
# starts a local Ray itself), and a controller that polls its workers every 0.5 s instead of 2 s
# notices a finished or killed worker sooner: every Ray Train run in the suite ends ~1.5 s sooner.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_worker_niceness", "0")  # as genbench starts a local Ray (cluster.py)
# numpy's OpenBLAS (numpy, scipy, torch-fidelity's KID and FID, scikit-learn) starts a thread per
# core in every process; with 2 xdist workers and their Ray workers on 2 cores those threads spin
# against each other: one KID (100 small matmuls) took ~4 s instead of ~0.15 s, one FID's sqrtm
# ~0.8 s instead of ~0.02 s. One BLAS thread per process here, in the Ray workers and the
# subprocesses this suite starts (they inherit the environment); threadpoolctl covers a numpy
# that a plugin imported before this file.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
try:
    from threadpoolctl import threadpool_limits as _blas_limits   # comes with scikit-learn
    _blas_limits(limits=int(os.environ["OPENBLAS_NUM_THREADS"]), user_api="blas")
except ImportError:
    pass


# Running on 2 xdist workers: which tests go together, and the longest first.
from testing.xdist_units import (pytest_collection_modifyitems, pytest_configure,  # noqa: E402,F401
                                 pytest_configure_node, pytest_unconfigure,
                                 pytest_xdist_make_scheduler)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny test models run fastest on one thread; two oversubscribe a busy 2-core machine.
    Use with pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray shared by every test that needs it (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh instance, even where RAY_ADDRESS names a cluster
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        # as genbench does for a Ray it starts (pipeline/reaper.py): once this pytest process
        # has ended, what its Ray left ends too (a ~1 GB ray::TrainController of a 2-worker
        # bench test was once left running with parent 1 for an hour)
        from pipeline import reaper
        reaper.start()
    yield ray
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run from a temp dir, so ray_results/ and mlflow.db never land in the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A private sqlite MLflow store for this test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def fast(model: str) -> list[str]:
    """Nets small enough for 2 cores, each family keeping its real architecture: the family's
    own TINY (pipeline/models/<family>.py), as --set overrides ["vae.width=8", ...]."""
    from testing.evalkit import tiny_size
    return [f"{model}.{k}={v}" for k, v in tiny_size(model).items()]


# checkpoints at exactly 15 and 30 (no skipping of close ones: tests rely on both steps)
FAST_TRAIN = ["train.batch_size=32", "train.log_every=10", "train.checkpoint_every=15",
              "train.checkpoint_min_interval_s=0"]


@pytest.fixture(scope="session")
def fast_sets():
    """--set arguments that shrink a family's run: fast_sets("vae") -> ["--set", ...]."""
    def sets(model: str) -> list[str]:
        return [arg for kv in fast(model) + FAST_TRAIN for arg in ("--set", kv)]
    return sets


@dataclass
class FinishedRun:
    exit_code: int
    run_id: str
    experiment: str
    uri: str
    workdir: Path
    steps: int
    out: str = ""   # what the command printed: stdout (summary) and stderr (progress)
    err: str = ""


FAMILY_STEPS = 30
REAL_COMMAND = {"gan"}  # trained by a real `genbench` process (its console output is tested)


@pytest.fixture(scope="session")
def family_run(ray_local, tmp_path_factory, fast_sets):
    """family_run("vae") -> the session's one trained run of that family, trained on first use:
    `genbench train --model F --workers 2 --steps 30 --experiment train-F` on the session's Ray,
    every family in one MLflow store, checkpoints at steps 15 and 30. The CLI, eval, resume
    and loop tests all read these runs instead of training their own. Tests that tamper with a
    run's files restore them."""
    import contextlib
    import io
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from genbench.cli import main

    workdir = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{workdir / 'm.db'}"
    runs: dict[str, FinishedRun] = {}

    def train(model: str) -> FinishedRun:
        argv = ["train", "--model", model, "--workers", "2", "--steps", str(FAMILY_STEPS),
                "--experiment", f"train-{model}", *fast_sets(model)]
        if model in REAL_COMMAND:  # on the session's Ray too: one Ray instance per session
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
                   "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
            proc = subprocess.run([sys.executable, "-m", "genbench", *argv], cwd=workdir,
                                  env=env, capture_output=True, text=True, timeout=900)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            out, err = io.StringIO(), io.StringIO()
            with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), \
                    contextlib.redirect_stderr(err):
                mp.chdir(workdir)
                mp.setenv("MLFLOW_TRACKING_URI", uri)
                code = main(argv)
            out, err = out.getvalue(), err.getvalue()
        assert code == 0, err[-3000:]
        client = MlflowClient(uri)
        found = client.search_runs([client.get_experiment_by_name(f"train-{model}").experiment_id])
        assert len(found) == 1
        return FinishedRun(code, found[0].info.run_id, f"train-{model}", uri, workdir,
                           FAMILY_STEPS, out, err)

    def get(model: str) -> FinishedRun:
        if model not in runs:
            runs[model] = train(model)
        return runs[model]
    return get


@pytest.fixture(scope="session")
def ae_run(family_run) -> FinishedRun:
    return family_run("ae")


@pytest.fixture(scope="session")
def domain_classifier(tmp_path_factory) -> Path:
    """A GENBENCH_CACHE holding the session's test domain classifier for Fashion-MNIST, trained
    on first use: only the tests that compute FID/IS/KID/PR ask for it."""
    from testing.evalkit import domain_cache
    return domain_cache(tmp_path_factory.getbasetemp())


@pytest.fixture
def offline_torchvision(monkeypatch):
    """torchvision's downloads fail as they do on a machine without internet (fast, and the
    same on a CI machine that has internet): its URLs point at a closed local port."""
    import torchvision

    dead = "http://127.0.0.1:9/"
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [dead])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [dead])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", dead + "cifar-10-python.tar.gz")

"""Shared fixtures: one local Ray for the session, a private MLflow store, a temp working dir."""
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Ray Train V2 is the default in ray >= 2.51; pin it so the worker processes agree with the driver.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet test logs


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


# Nets and batches small enough for 2 cores; every family keeps its real architecture.
FAST = {"ae": ["ae.width=8", "ae.latent_dim=8"],
        "vae": ["vae.width=8", "vae.latent_dim=8"],
        "gan": ["gan.width=8", "gan.latent_dim=16"],
        "pixelcnn": ["pixelcnn.channels=8", "pixelcnn.layers=2", "pixelcnn.head_channels=16"]}
FAST_TRAIN = ["train.batch_size=32", "train.log_every=10", "train.checkpoint_every=15"]


@pytest.fixture(scope="session")
def fast_sets():
    """--set arguments that shrink a family's run: fast_sets("vae") -> ["--set", ...]."""
    def sets(model: str) -> list[str]:
        return [arg for kv in FAST[model] + FAST_TRAIN for arg in ("--set", kv)]
    return sets


@dataclass
class FinishedRun:
    exit_code: int
    run_id: str
    experiment: str
    uri: str
    workdir: Path
    steps: int


@pytest.fixture(scope="session")
def ae_run(ray_local, tmp_path_factory, fast_sets):
    """One finished `genbench train --model ae --workers 2 --steps 30` (in-process, on the shared
    Ray), with checkpoints at steps 15 and 30. Tests that tamper with its files restore them."""
    from mlflow.tracking import MlflowClient

    from genbench.cli import main

    workdir = tmp_path_factory.mktemp("ae_run")
    uri = f"sqlite:///{workdir / 'm.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        code = main(["train", "--model", "ae", "--workers", "2", "--steps", "30",
                     "--experiment", "E", *fast_sets("ae")])
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("E").experiment_id])
    assert len(runs) == 1
    return FinishedRun(code, runs[0].info.run_id, "E", uri, workdir, 30)


@pytest.fixture
def offline_torchvision(monkeypatch):
    """torchvision's downloads fail as they do on a machine without internet (fast, and the
    same on a CI machine that has internet): its URLs point at a closed local port."""
    import torchvision

    dead = "http://127.0.0.1:9/"
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [dead])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [dead])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", dead + "cifar-10-python.tar.gz")

"""Shared fixtures: one local Ray for the session, a private MLflow store, a temp working dir."""
import os

import pytest

# Ray Train V2 is the default in ray >= 2.51; pin it so the worker processes agree with the driver.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny test models run fastest on one thread; two oversubscribe this 2-core machine."""
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
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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

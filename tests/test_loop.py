"""The training loop's step/log/report machinery (pipeline/loop.py), run for real: fit() on a
tiny AE with real data and a real MLflow store, validation over a real 3-process gloo group,
checkpoint spacing (rank 0's clock decides for every rank), and the images_per_s of a real
`genbench train` run against MLflow's own timestamps."""
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import Config
from pipeline.data import ImageData, load_split
from pipeline.loop import Context, build_nets, fit, rank0_says, validation_metrics
from pipeline.models import FAMILIES
from pipeline.tracking import RunLogger

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_AE = {"model": "ae", "ae": {"width": 8, "latent_dim": 8}}


@pytest.fixture(scope="module")
def small_data():
    """2,048 training and 301 validation images of Fashion-MNIST."""
    full = load_split("fashion-mnist", "train")
    cut = lambda a, b: ImageData(full.images[a:b], full.labels[a:b], full.num_classes)  # noqa
    return cut(0, 2048), cut(2048, 2349)


def test_eval_every_off_the_log_grid_still_validates(small_data, tmp_path):
    """eval_every=30, log_every=20: validation and sample grids at 30, 60, 90; training metrics
    at 20, 40, 60, 80 and the last step; Ray hears from the loop at the checkpoint only."""
    data, val = small_data
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = Config.from_dict({**TINY_AE, "train": {"steps": 90, "batch_size": 16, "log_every": 20,
                                                 "eval_every": 30, "checkpoint_every": 1000}})
    run_id = tracking.start_run("loop", "r", {}, {}, uri=uri)
    logger, reports, progress = RunLogger(run_id, uri), [], []
    fit(cfg, Context(run_id=run_id, tracking_uri=uri),
        lambda metrics, directory: reports.append((metrics["step"], directory is not None)),
        logger=logger, data=data, val=val, progress=lambda m: progress.append(m["step"]))
    logger.close()
    client = MlflowClient(uri)
    steps = lambda key: [m.step for m in client.get_metric_history(run_id, key)]  # noqa
    assert steps("val_mse") == [30, 60, 90]
    assert steps("mse") == steps("images_per_s") == [20, 40, 60, 80, 90]
    grids = tracking.list_artifacts(run_id, "reconstructions", uri)
    assert grids == [f"reconstructions/step_00000{s}.png" for s in (30, 60, 90)]
    assert reports == [(90, True)]            # one report, with the final checkpoint
    assert progress == [20, 30, 40, 60, 80, 90]
    assert tracking.list_artifacts(run_id, "checkpoint", uri) == ["checkpoint/checkpoint.pt"]


# --- validation means per image across ranks -------------------------------------------------
WORLD, CHUNK = 3, 40


def ranks_wrote(directory: Path) -> dict:
    """What each rank left in directory. Files, not a multiprocessing.Manager: a Manager forks
    this process, a live Ray driver (the session's ray_local) with gRPC threads, which is unsafe:
    twice the worker that had run this module then hung on its next Ray call (an actor it never
    saw ALIVE, ray.cluster_resources())."""
    return {rank: json.loads((directory / f"rank{rank}.json").read_text())
            for rank in range(WORLD)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _validate_on_rank(rank: int, port: int, val: ImageData, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cfg = Config.from_dict(TINY_AE)
        nets, _ = build_nets(cfg, val, torch.device("cpu"), 1)  # same seed: same weights
        from contextlib import nullcontext
        scores = validation_metrics(cfg, nets, val, Context(rank=rank, world=WORLD),
                                    nullcontext, chunk=CHUNK)
        (out / f"rank{rank}.json").write_text(json.dumps(scores))
    finally:
        dist.destroy_process_group()


def test_validation_mean_is_per_image_over_ranks_and_chunks(small_data, tmp_path):
    """301 images over 3 ranks (101, 100, 100) in chunks of 40 (last chunks of 21 and 20): the
    mean equals one forward over all 301 images, which is the mean per image."""
    _, val = small_data
    mp.spawn(_validate_on_rank, args=(free_port(), val, tmp_path), nprocs=WORLD, join=True)
    results = ranks_wrote(tmp_path)
    cfg = Config.from_dict(TINY_AE)
    nets, _ = build_nets(cfg, val, torch.device("cpu"), 1)
    nets["model"].eval()
    with torch.no_grad():
        expected = FAMILIES["ae"].loss(cfg.family, nets, val.images, None, "model")["mse"]
    for rank in range(WORLD):
        assert results[rank]["val_mse"] == pytest.approx(float(expected), rel=1e-6)


# --- checkpoints no closer than min_checkpoint_interval_s ------------------------------------
@pytest.mark.parametrize("interval, slow_report, expected", [
    (0.0, 0.0, list(range(1, 13))),    # off: every checkpoint_every steps
    (1e9, 0.0, [1, 12]),               # the first and the last are never skipped
    (0.2, 0.25, list(range(1, 13))),   # measured from the last checkpoint: spaced ones stay
])
def test_checkpoints_closer_than_the_interval_are_skipped(small_data, interval, slow_report,
                                                          expected):
    data, _ = small_data
    cfg = Config.from_dict({**TINY_AE, "data": {"val_fraction": 0.0},
                            "train": {"steps": 12, "batch_size": 16, "log_every": 100,
                                      "eval_every": 1000, "checkpoint_every": 1}})
    reports = []

    def report(metrics, directory):
        reports.append((metrics["step"], directory is not None))
        time.sleep(slow_report)

    fit(cfg, Context(), report, data=data, min_checkpoint_interval_s=interval)
    assert reports == [(step, True) for step in expected]


def _rank0_says_on_rank(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ctx = Context(rank=rank, world=WORLD)
        said = [rank0_says(rank == 0, ctx), rank0_says(rank != 0, ctx)]
        (out / f"rank{rank}.json").write_text(json.dumps(said))
    finally:
        dist.destroy_process_group()


def test_rank0_decides_for_every_rank(tmp_path):
    """Whether a step checkpoints is rank 0's call on every rank (the ranks' clocks differ)."""
    mp.spawn(_rank0_says_on_rank, args=(free_port(), tmp_path), nprocs=WORLD, join=True)
    assert ranks_wrote(tmp_path) == {rank: [True, False] for rank in range(WORLD)}


# --- images_per_s is wall-clock ----------------------------------------------------------------
@pytest.mark.slow  # reads the session's trained ae run
def test_images_per_s_matches_mlflow_timestamps(ae_run):
    """For the session's `genbench train` run (2 workers, checkpoints at 15 and 30, so Ray
    reports and checkpoint writes fall inside intervals): images_per_s x interval seconds from
    MLflow's timestamps = images trained, within 5% (plus 1 ms for whole-ms timestamps)."""
    client = MlflowClient(ae_run.uri)
    history = sorted(client.get_metric_history(ae_run.run_id, "images_per_s"),
                     key=lambda m: m.step)
    assert [m.step for m in history] == [10, 15, 20, 30]
    batch = 32
    for before, after in zip(history, history[1:]):
        seconds = (after.timestamp - before.timestamp) / 1000
        implied = (after.step - before.step) * batch / after.value
        assert abs(implied - seconds) <= 0.05 * seconds + 0.001, (before, after)

"""pipeline/loop.py + pipeline/checkpoint.py: a run stopped after a checkpoint and resumed from
it ends exactly where an uninterrupted run ends: the AE's weights and optimizer state bit for bit
on CPU, and the same MLflow metric history, point for point. fit() runs in this process (world
1) with a real MLflow store; the interruption is an exception raised right after the checkpoint
is handed over, where a killed driver or worker would stop."""
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import checkpoint as ckpt
from pipeline import tracking
from pipeline.config import Config
from pipeline.data import ImageData, load_split
from pipeline.loop import Context, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS, STOP_AT = 20, 10
CFG = Config.from_dict({"model": "ae", "ae": {"width": 8, "latent_dim": 8},
                        "train": {"steps": STEPS, "batch_size": 16, "log_every": 5,
                                  "eval_every": 10, "checkpoint_every": STOP_AT, "seed": 3}})
TIMING = {"images_per_s", "peak_memory_mb"}  # wall-clock and memory: not a function of the math


class Stop(Exception):
    """The interruption: raised once the checkpoint of step STOP_AT has been handed over."""


@pytest.fixture(scope="module")
def small_data():
    full = load_split("fashion-mnist", "train")
    return (ImageData(full.images[:512], full.labels[:512], full.num_classes),
            ImageData(full.images[512:712], full.labels[512:712], full.num_classes))


def run_fit(uri, run_id, data, val, keep, start=None, stop_at=None):
    """fit() as a Ray worker runs it: report() gets every checkpoint, which is copied to keep/
    (Ray's storage does the same); stop_at raises Stop after that step's checkpoint."""
    def report(metrics, checkpoint_dir):
        step = int(metrics["step"])
        if checkpoint_dir:
            target = keep / f"checkpoint_{step:09d}"
            shutil.copytree(checkpoint_dir, target)
        if step == stop_at:
            raise Stop

    ctx = Context(run_id=run_id, tracking_uri=uri)
    logger = tracking.RunLogger(run_id, uri)
    try:
        fit(CFG, ctx, report, start=start, logger=logger, data=data, val=val)
    finally:
        logger.close()  # flush the writer thread


def history(uri, run_id) -> dict:
    c = MlflowClient(uri)
    keys = set(c.get_run(run_id).data.metrics) - TIMING
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k)) for k in keys}


def test_a_resumed_fit_equals_an_uninterrupted_one(small_data, tmp_path):
    data, val = small_data
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    whole_id = tracking.start_run("resume", "whole", {}, {}, uri=uri)
    run_fit(uri, whole_id, data, val, tmp_path / "whole")

    parts_id = tracking.start_run("resume", "parts", {}, {}, uri=uri)
    with pytest.raises(Stop):
        run_fit(uri, parts_id, data, val, tmp_path / "parts", stop_at=STOP_AT)
    saved = ckpt.load(tmp_path / "parts" / f"checkpoint_{STOP_AT:09d}")
    assert saved["step"] == STOP_AT and not (tmp_path / "parts" / f"checkpoint_{STEPS:09d}").exists()
    run_fit(uri, parts_id, data, val, tmp_path / "parts", start=saved)

    whole = ckpt.load(tmp_path / "whole" / f"checkpoint_{STEPS:09d}")
    resumed = ckpt.load(tmp_path / "parts" / f"checkpoint_{STEPS:09d}")
    assert whole["step"] == resumed["step"] == STEPS
    before = saved["nets"]["model"]
    for name, tensor in whole["nets"]["model"].items():
        assert torch.equal(resumed["nets"]["model"][name], tensor), name     # bit for bit
    assert any(not torch.equal(before[n], t) for n, t in whole["nets"]["model"].items())
    adam_whole, adam_resumed = whole["optimizers"]["model"], resumed["optimizers"]["model"]
    for i, state in adam_whole["state"].items():
        for key, value in state.items():
            assert torch.equal(adam_resumed["state"][i][key], value), (i, key)

    expected, got = history(uri, whole_id), history(uri, parts_id)
    assert {"mse", "val_mse", "lr", "epoch"} <= set(expected)
    assert got == expected                          # same keys, steps and values: no gap, no copy
    assert [s for s, _ in expected["mse"]] == [5, 10, 15, 20]

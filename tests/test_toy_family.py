"""A family that no source file knows: defined in this test file, registered with one line, then
run through `genbench train --workers 2`, `genbench eval`, a 2-trial `genbench tune` and
`genbench report`.

The toy is a table of independent 256-way softmaxes, one per sub-pixel: an exact likelihood
and a sampler, and on purpose no validation loss (SWEEP_METRIC None), so its sweep runs on the
small-sample FID that any such family gets. Ray workers and Tune trials are other processes:
they import this file from the path its config carries (`family_module`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import register, unregister


@pytest.fixture(scope="module", autouse=True)
def toy_family():
    register("toy", __file__)   # the one registration line
    yield
    unregister("toy")           # other test modules see the built-in families only


# --- the family (contract v2) ------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    lr: float = 0.05


PHASES = ("model",)
PROGRESS_KEYS = ("bpd",)
TUNE_SPACE = {"lr": {"loguniform": [0.01, 0.1]}}
SWEEP_METRIC, SWEEP_MODE = None, "min"
LIKELIHOOD = "exact"
LIKELIHOOD_NOTE = "exact: an independent 256-way softmax per sub-pixel"
GRID_SIZE = 16
DDP_OPTIONS: dict[str, dict] = {}


class PixelTable(nn.Module):
    def __init__(self, image_shape, num_classes: int):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.logits = nn.Parameter(torch.zeros(256, *image_shape))        # uniform at start
        self.class_bias = (nn.Parameter(torch.zeros(num_classes, 256, *image_shape))
                           if num_classes else None)

    def forward(self, n: int, y=None) -> torch.Tensor:
        """Logits (n, 256, C, H, W)."""
        logits = self.logits.expand(n, *self.logits.shape)
        return logits + self.class_bias[y] if self.class_bias is not None else logits


def build(cfg: Config, image_shape, num_classes: int) -> dict[str, nn.Module]:
    return {"model": PixelTable(image_shape, num_classes)}


def make_optimizers(cfg: Config, nets) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(nets["model"].parameters(), lr=cfg.lr)}


def _nats(nets, x, y) -> torch.Tensor:
    logits = nets["model"](x.shape[0], y)
    return F.cross_entropy(logits.float(), x.long(), reduction="none").flatten(1).sum(1)


def loss(cfg: Config, nets, x, y, phase: str) -> dict[str, torch.Tensor]:
    per_dim = _nats(nets, x, y).mean() / x[0].numel()
    return {"loss": per_dim, "bpd": per_dim.detach() / math.log(2)}


@torch.no_grad()
def nll(cfg: Config, nets, x, y=None, k: int = 1) -> torch.Tensor:
    return _nats(nets, x, y)


@torch.no_grad()
def sample(cfg: Config, nets, n: int, labels=None, device="cpu") -> torch.Tensor:
    model = getattr(nets["model"], "module", nets["model"])
    logits = model(n, labels).float().movedim(1, -1)                   # (n, C, H, W, 256)
    return torch.distributions.Categorical(logits=logits).sample().to(torch.uint8)


# --- the test ----------------------------------------------------------------------------------
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SETS = ["--set", "train.batch_size=32", "--set", "train.log_every=2",
        "--set", "train.checkpoint_every=4"]


def test_the_registry_knows_the_toy_only_through_this_file():
    from pipeline.config import Config as RunConfig
    from pipeline.models import FAMILIES, can, is_built_in

    assert "toy" in FAMILIES and not is_built_in("toy")
    assert can("toy", "sample") and can("toy", "nll") and not can("toy", "encode")
    saved = RunConfig.from_dict({"model": "toy"}).to_dict()
    assert saved["family_module"] == __file__ and saved["toy"] == {"lr": 0.05}


def test_toy_family_trains_evaluates_sweeps_and_is_reported(ray_local, tmp_path, monkeypatch,
                                                            tmp_path_factory, capsys):
    from testing.evalkit import domain_cache

    from genbench.cli import main
    from pipeline import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("GENBENCH_CACHE", str(domain_cache(tmp_path_factory.getbasetemp())))

    # train: DDP over 2 Ray workers, which import this file to rebuild the config
    assert main(["train", "--model", "toy", "--workers", "2", "--steps", "8",
                 "--experiment", "toy", *SETS]) == 0
    c = tracking.client()
    exp = c.get_experiment_by_name("toy").experiment_id
    (run,) = c.search_runs([exp], "tags.`genbench.kind` = 'train'")
    assert run.info.status == "FINISHED" and run.data.params["model"] == "toy"
    assert run.data.metrics["bpd"] < 8.0          # learned something from uniform (8 bits/dim)
    assert any(a.path.startswith("samples") for a in c.list_artifacts(run.info.run_id))

    # eval: exact bits/dim and FID & co. through the same contract
    assert main(["eval", "--run-id", run.info.run_id, "--n-fake", "200", "--n-real", "200",
                 "--bpd-images", "200", "--quiet"]) == 0
    run = c.get_run(run.info.run_id)
    assert 0 < run.data.metrics["bpd_test"] < 8.0
    assert run.data.tags["eval.bpd"] == LIKELIHOOD_NOTE and run.data.tags["eval.bpd.k"] == "1"
    assert run.data.metrics["fid_domain"] > 0
    assert run.data.tags["eval.probe"].startswith("not applicable")   # no encoder

    # tune: 2 trials in Tune trial processes; no validation loss, so the small-sample FID
    assert main(["tune", "--model", "toy", "--samples", "2", "--steps", "2",
                 "--scheduler", "fifo", "--experiment", "toy", *SETS]) == 0
    (parent,) = c.search_runs([exp], "tags.`genbench.kind` = 'tune'")
    assert parent.data.params["tune.metric"] == "val_fid_domain"
    children = c.search_runs([exp], "tags.`genbench.kind` = 'tune-trial'")
    assert len(children) == 2
    for child in children:
        assert child.data.metrics["val_fid_domain"] > 0
        assert 0.01 <= float(child.data.params["toy.lr"]) <= 0.1

    # report: the toy has its row, its numbers and its sweep
    capsys.readouterr()
    assert main(["report", "--experiment", "toy", "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| toy")]
    assert rows and f"{run.data.metrics['bpd_test']:.4g}" in rows[0]
    assert "tune-toy" in md and "val_fid_domain" in md

"""pipeline/ema.py, and its path through checkpoints, resume and evaluation: the average's
arithmetic on a one-weight net, by hand; the averages survive a checkpoint and a resume (a
resumed run's averages equal an uninterrupted run's bit for bit); evaluation and sweep sampling
load the averaged weights and say so; a checkpoint without averages still loads. The GAN's
default EMA is checked on the session's real `genbench train` run."""
import shutil

import pytest
import torch
from torch import nn

from eval.load import load_model, model_from_payload
from pipeline import checkpoint as ckpt
from pipeline.config import Config
from pipeline.data import ImageData, load_split
from pipeline.ema import WeightAverage, decays_for
from pipeline.errors import ConfigError
from pipeline.loop import Context, fit
from testing.evalkit import save_checkpoint, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class OneWeight(nn.Module):
    """y = w * x, and a BatchNorm whose running mean is a float buffer and its batch counter
    an integer one."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0]))
        self.norm = nn.BatchNorm1d(1)


def sgd_step(net, opt):
    """Gradient of w * 1 is 1: SGD with lr 1 lowers w by exactly 1 (1 -> 0 -> -1)."""
    opt.zero_grad()
    (net.w * 1.0).sum().backward()
    opt.step()
    net.norm(torch.full((4, 1), float(net.w.item())))  # train mode: running mean moves too


def test_the_average_after_two_steps_by_hand():
    net = OneWeight()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    avg = WeightAverage({"model": net}, {"model": 0.999})
    sgd_step(net, opt)
    avg.update()
    # d = min(0.999, (1 + 0) / (10 + 0)) = 0.1: 0.1 * 1 + 0.9 * 0
    assert avg.nets["model"].w.item() == pytest.approx(0.1, abs=1e-7)
    sgd_step(net, opt)
    avg.update()
    # d = min(0.999, 2 / 11): 2/11 * 0.1 + 9/11 * (-1) = -0.8
    assert net.w.item() == -1.0
    assert avg.nets["model"].w.item() == pytest.approx(-0.8, abs=1e-7)
    # running mean (BatchNorm momentum 0.1): 0 -> 0.1*0 = 0 -> 0.9*0 + 0.1*(-1) = -0.1;
    # averaged: 0.1*0 + 0.9*0 = 0, then 2/11*0 + 9/11*(-0.1)
    assert avg.nets["model"].norm.running_mean.item() == pytest.approx(-0.9 / 11, abs=1e-7)
    assert avg.nets["model"].norm.num_batches_tracked.item() == 2   # copied, not averaged
    assert avg.updates == 2 and not avg.nets["model"].w.requires_grad


def test_the_configured_decay_caps_the_warm_up():
    net = OneWeight()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    avg = WeightAverage({"model": net}, {"model": 0.05})
    for _ in range(2):
        sgd_step(net, opt)
        avg.update()
    # d = 0.05 both times: 0.05*1 + 0.95*0 = 0.05, then 0.05*0.05 + 0.95*(-1) = -0.9475
    assert avg.nets["model"].w.item() == pytest.approx(-0.9475, abs=1e-7)


def test_tied_weights_are_averaged_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
            self.b.weight = self.a.weight
    net = Tied()
    nn.init.constant_(net.a.weight, 1.0)
    avg = WeightAverage({"model": net}, {"model": 0.999})
    with torch.no_grad():
        net.a.weight.fill_(0.0)
    avg.update()
    copy = avg.nets["model"]
    assert copy.b.weight is copy.a.weight
    assert copy.a.weight.item() == pytest.approx(0.1, abs=1e-7)   # moved twice: 0.01


def test_which_nets_keep_an_average():
    gan = Config.from_dict({"model": "gan"})
    nets = {"generator": None, "discriminator": None}
    assert decays_for(gan, nets) == {"generator": 0.999}                  # the family's default
    assert decays_for(Config.from_dict({"model": "gan", "train": {"ema_decay": 0.99}}),
                      nets) == {"generator": 0.99}                         # decay overridden
    assert decays_for(Config.from_dict({"model": "gan", "train": {"ema_decay": 0}}), nets) == {}
    assert decays_for(Config.from_dict({"model": "vae"}), {"model": None}) == {}  # off elsewhere
    assert decays_for(Config.from_dict({"model": "vae", "train": {"ema_decay": 0.9}}),
                      {"model": None}) == {"model": 0.9}
    with pytest.raises(ConfigError, match=r"train.ema_decay must lie in \[0, 1\)"):
        Config.from_dict({"model": "gan", "train": {"ema_decay": 1.0}})


# --- checkpoint and resume (fit() in this process, as tests/test_loop_resume.py) -----------------

STEPS, STOP_AT = 8, 4
AE = Config.from_dict({"model": "ae", "ae": {"width": 8, "latent_dim": 8},
                       "train": {"steps": STEPS, "batch_size": 16, "log_every": 4,
                                 "eval_every": 4, "checkpoint_every": STOP_AT, "seed": 3,
                                 "ema_decay": 0.9, "checkpoint_min_interval_s": 0}})


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def small_data():
    full = load_split("fashion-mnist", "train")
    return (ImageData(full.images[:256], full.labels[:256], full.num_classes),
            ImageData(full.images[256:320], full.labels[256:320], full.num_classes))


def run_fit(cfg, data, val, keep, start=None, stop_at=None):
    def report(metrics, checkpoint_dir):
        step = int(metrics["step"])
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, keep / f"checkpoint_{step:09d}")
        if step == stop_at:
            raise Stop
    fit(cfg, Context(), report, start=start, data=data, val=val)
    return keep


def test_averages_survive_a_checkpoint_and_a_resume(small_data, tmp_path):
    data, val = small_data
    whole = run_fit(AE, data, val, tmp_path / "whole")
    with pytest.raises(Stop):
        run_fit(AE, data, val, tmp_path / "parts", stop_at=STOP_AT)
    saved = ckpt.load(tmp_path / "parts" / f"checkpoint_{STOP_AT:09d}")
    assert saved["ema"]["updates"] == STOP_AT and saved["ema"]["decays"] == {"model": 0.9}
    run_fit(AE, data, val, tmp_path / "parts", start=saved)

    end = f"checkpoint_{STEPS:09d}"
    a, b = ckpt.load(whole / end)["ema"], ckpt.load(tmp_path / "parts" / end)["ema"]
    assert a["updates"] == b["updates"] == STEPS
    for name, tensor in a["nets"]["model"].items():
        assert torch.equal(b["nets"]["model"][name], tensor), name   # bit for bit
    raw = ckpt.load(whole / end)["nets"]["model"]
    assert any(not torch.equal(raw[n], t) for n, t in a["nets"]["model"].items())


def test_a_checkpoint_without_averages_resumes_and_evaluates(small_data, tmp_path):
    """A checkpoint from before the EMA (no "ema" key): the averages start from its weights."""
    data, val = small_data
    with pytest.raises(Stop):
        run_fit(AE, data, val, tmp_path / "a", stop_at=STOP_AT)
    old = ckpt.load(tmp_path / "a" / f"checkpoint_{STOP_AT:09d}")
    del old["ema"]
    model = model_from_payload(old)
    assert model.ema == "none"
    for name, tensor in old["nets"]["model"].items():
        assert torch.equal(model.nets["model"].state_dict()[name], tensor), name
    run_fit(AE, data, val, tmp_path / "b", start=old)
    resumed = ckpt.load(tmp_path / "b" / f"checkpoint_{STEPS:09d}")
    assert resumed["ema"]["updates"] == STEPS - STOP_AT


# --- evaluation and sampling use the averages ------------------------------------------------

def gan_checkpoint_with_average(directory):
    """A tiny GAN whose generator moved after its average was taken: the two differ."""
    cfg, nets, opts = tiny_model("gan")
    avg = WeightAverage.for_run(cfg, nets)
    with torch.no_grad():
        for p in nets["generator"].parameters():
            p.add_(0.5)
    avg.update()   # d = 0.1: the average is 0.9 of the way to the moved weights
    path = ckpt.save(directory, nets, opts, 1, cfg.to_dict(), None, ema=avg.state_dict())
    return cfg, path, avg


def test_evaluation_and_sweeps_sample_from_the_averaged_generator(tmp_path):
    cfg, path, avg = gan_checkpoint_with_average(tmp_path)
    payload = ckpt.load(path)
    model = load_model(checkpoint=str(path))
    assert model.ema == "generator (decay 0.999, 1 updates)"
    loaded = model.nets["generator"].state_dict()
    for name, tensor in avg.nets["generator"].state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    raw = payload["nets"]["generator"]
    assert any(not torch.equal(loaded[n], t) for n, t in raw.items())   # not the trained G
    for name, tensor in payload["nets"]["discriminator"].items():   # no average: as trained
        assert torch.equal(model.nets["discriminator"].state_dict()[name], tensor), name
    weights = ckpt.sampling_weights(payload)   # what a sweep's small-sample FID loads
    assert weights["generator"] is payload["ema"]["nets"]["generator"]
    assert weights["discriminator"] is payload["nets"]["discriminator"]


def test_a_mismatched_average_is_one_line(tmp_path):
    cfg, path, _ = gan_checkpoint_with_average(tmp_path)
    payload = ckpt.load(path)
    payload["ema"]["nets"]["generator"] = {"nonsense": torch.zeros(1)}
    with pytest.raises(ConfigError, match="weight average of generator does not fit"):
        model_from_payload(payload)
    cfg2, nets, opts = tiny_model("ae")
    payload = ckpt.load(save_checkpoint(tmp_path / "ae", cfg2, nets, opts))
    payload["ema"] = {"nets": {"generator": {}}}
    with pytest.raises(ConfigError, match=r"weight averages of \['generator'\]"):
        model_from_payload(payload)


@pytest.mark.uses_family("gan")
def test_the_gan_run_keeps_and_evaluates_its_generator_average(family_run, monkeypatch):
    """The session's real `genbench train --model gan --workers 2` run: its final checkpoint
    holds the generator's average over every step (rank 0's), and eval loads it."""
    run = family_run("gan")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run.uri)
    model = load_model(run_id=run.run_id)
    ema = model.payload["ema"]
    assert ema["updates"] == run.steps and ema["decays"] == {"generator": 0.999}
    assert model.ema == f"generator (decay 0.999, {run.steps} updates)"
    loaded = model.nets["generator"].state_dict()
    for name, tensor in ema["nets"]["generator"].items():
        assert torch.equal(loaded[name], tensor), name
    raw = model.payload["nets"]["generator"]
    assert any(not torch.equal(raw[n], t) for n, t in ema["nets"]["generator"].items())

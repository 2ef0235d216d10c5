"""The DDPM family: the forward process, the bound, the two samplers, conditioning, and the CLI
end to end (train, eval bpd + FID, eval ood + bayes on one conditional run)."""
import math

import pytest
import torch

from pipeline.models import diffusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 8, 8)   # small images: the statistics below need thousands of draws


def tiny(**overrides) -> diffusion.Config:
    cfg = diffusion.Config(**{**diffusion.TINY, **overrides})
    cfg.validate()
    return cfg


def random_net(cfg, shape=SHAPE, num_classes=0, seed=0):
    """Fixed random weights, the output layer included (it starts at zero when trained), so
    eps(x_t, t) depends on x_t, t and y."""
    torch.manual_seed(seed)
    nets = diffusion.build(cfg, shape, num_classes)
    with torch.no_grad():
        torch.nn.init.normal_(nets["model"].conv_out.weight, std=0.3)
        if num_classes:
            torch.nn.init.normal_(nets["model"].label.weight, std=3.0)
    nets["model"].eval()
    return nets


def images(n=4, shape=SHAPE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("kind", diffusion.SCHEDULES)
def test_closed_form_forward_process_matches_iterating_single_steps(kind):
    """q(x_t|x_0) = N(sqrt(abar_t) x_0, 1 - abar_t) against x_t = sqrt(alpha_t) x_{t-1} +
    sqrt(beta_t) z iterated from x_0: means and variances agree at every t (20,000 draws)."""
    T, n = 12, 20000
    sched = diffusion.schedule(kind, T, "beta")
    torch.manual_seed(0)
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0], dtype=torch.float64)
    x = x0.expand(n, -1).clone()
    for t in range(1, T + 1):
        x = sched.alpha[t].sqrt() * x + sched.beta[t].sqrt() * torch.randn_like(x)
        closed = diffusion.q_sample(sched, x0.expand(n, 1, 1, -1),
                                    torch.full((n,), t), torch.randn(n, 1, 1, 4,
                                                                     dtype=torch.float64))[:, 0, 0]
        mean, var = sched.abar[t].sqrt() * x0, 1 - sched.abar[t]
        se_mean, se_var = (var / n).sqrt(), var * math.sqrt(2 / n)
        for draws in (x, closed):
            assert ((draws.mean(0) - mean).abs() < 5 * se_mean).all(), t
            assert ((draws.var(0) - var).abs() < 5 * se_var).all(), t
    assert sched.abar[T] < 0.05   # the chain ends near N(0, I)


def test_discretized_gaussian_sums_to_one():
    """The 256 bin probabilities sum to 1 for any mean and scale, tails in the edge bins."""
    gen = torch.Generator().manual_seed(0)
    mean = (torch.rand(32, 1, generator=gen) * 2.4 - 1.2).expand(32, 256)
    log_scale = (torch.rand(32, 1, generator=gen) * 7 - 7).expand(32, 256)   # 1e-3 .. 1
    levels = torch.arange(256, dtype=torch.uint8).expand(32, 256)
    logp = diffusion.discretized_gaussian_logp(levels, mean, log_scale)
    assert torch.allclose(logp.exp().sum(1), torch.ones(32, dtype=torch.float64), atol=1e-9)
    # far from the mean the log-probability stays finite (no clamp to log 1e-12)
    far = diffusion.discretized_gaussian_logp(torch.tensor([255]), torch.tensor([-1.0]),
                                              torch.tensor([math.log(0.01)]))
    assert torch.isfinite(far).all() and far.item() < -1e4


@pytest.mark.parametrize("nll_timesteps", [6, 100])
def test_full_sum_bound_is_the_sum_of_its_terms(nll_timesteps):
    """With nll_timesteps >= T, nll() is L_T + the T terms of t = 1..T, each with its own noise
    draw in that order; every term is >= 0."""
    cfg = tiny(timesteps=6, nll_timesteps=nll_timesteps)
    nets = random_net(cfg)
    x = images()
    torch.manual_seed(7)
    full = diffusion.nll(cfg, nets, x)
    torch.manual_seed(7)
    terms = [diffusion.prior_term(cfg, x)]
    with torch.no_grad():
        for t in range(1, 7):
            noise = torch.randn(x.shape)
            terms.append(diffusion.vlb_term(cfg, nets, x, torch.full((len(x),), t), noise))
    assert all((term >= 0).all() for term in terms)
    torch.testing.assert_close(full.double(), torch.stack(terms).sum(0), rtol=1e-6, atol=1e-3)


def test_subsampled_bound_is_unbiased():
    """2 of T = 6 timesteps per image, scaled by T / 2: the same mean as the full sum (over
    1,024 estimates each, within 5 standard errors), with a spread that is not zero."""
    full_cfg, sub_cfg = tiny(timesteps=6, nll_timesteps=6), tiny(timesteps=6, nll_timesteps=2)
    nets = random_net(full_cfg)
    x = images(8).repeat(128, 1, 1, 1)
    torch.manual_seed(1)
    full = diffusion.nll(full_cfg, nets, x).double().view(128, 8)
    sub = diffusion.nll(sub_cfg, nets, x).double().view(128, 8)
    se = (full.var(0) / 128 + sub.var(0) / 128).sqrt()
    assert ((full.mean(0) - sub.mean(0)).abs() < 5 * se).all()
    assert (sub.std(0) > full.std(0)).all()   # fewer timesteps: a noisier estimate


def test_ddim_with_every_step_and_eta_one_is_the_ancestral_sampler():
    """DDIM on all T timesteps with eta = 1 is ancestral sampling with the posterior variance:
    the same seed gives the same images (to rounding), and independent draws have the same
    per-pixel moments (1,000 each; with sigma_t^2 = beta_t instead they differ)."""
    base = tiny(timesteps=10, variance="posterior")
    ancestral = tiny(timesteps=10, variance="posterior", sampler="ancestral")
    ddim = tiny(timesteps=10, variance="posterior", sampler="ddim", sample_steps=10, eta=1.0)
    nets = random_net(base, num_classes=10)   # conditional: the labels reach every step
    n = 1000
    labels = torch.arange(n) % 10
    draws = {}
    for name, cfg, seed in (("a", ancestral, 0), ("d", ddim, 0), ("d2", ddim, 1)):
        torch.manual_seed(seed)
        draws[name] = diffusion.sample(cfg, nets, n, labels).float()
    same = (draws["a"] - draws["d"]).abs()
    assert same.max() <= 1 and (same == 0).float().mean() > 0.99
    a, d2 = draws["a"], draws["d2"]
    assert a.std() > 10   # the random net makes varied images, so the moments say something
    se = (a.var(0) / n + d2.var(0) / n).sqrt()
    z = (a.mean(0) - d2.mean(0)) / se.clamp(min=1e-3)
    assert z.abs().max() < 5 and z.abs().mean() < 1.2
    assert (a.std(0) / d2.std(0).clamp(min=1e-3) - 1).abs().max() < 0.2


class Oracle(torch.nn.Module):
    """The exact noise predictor for data that is one image x*: eps = (x_t - sqrt(abar_t) x*) /
    sqrt(1 - abar_t)."""

    def __init__(self, cfg, target):
        super().__init__()
        self.cfg, self.target, self.image_shape = cfg, target, tuple(target.shape[1:])

    def forward(self, x, t, y=None):
        abar = diffusion.schedule_of(self.cfg, x.device).at("abar", t).float()
        return (x - abar.sqrt() * diffusion.to_float(self.target)) / (1 - abar).sqrt()


@pytest.mark.parametrize("sampler,eta", [("ancestral", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_the_exact_noise_predictor_of_one_image_samples_that_image(sampler, eta):
    """Both samplers return x*, and with sigma_t^2 = beta~_t the bound is L_T + L_0 alone:
    every KL term is 0."""
    cfg = tiny(timesteps=50, sampler=sampler, eta=eta, sample_steps=7, nll_timesteps=50,
               variance="posterior")
    target = images(1)
    nets = {"model": Oracle(cfg, target)}
    torch.manual_seed(0)
    out = diffusion.sample(cfg, nets, 3)
    assert (out.int() - target.int()).abs().max() <= 1
    x = target.expand(2, -1, -1, -1)
    t = torch.full((2,), 10)
    assert diffusion.vlb_term(cfg, nets, x, t, torch.randn(x.shape)).abs().max() < 1e-6
    bound = diffusion.nll(cfg, nets, x).double()
    decoder = diffusion.vlb_term(cfg, nets, x, torch.ones(2, dtype=torch.long),
                                 torch.randn(x.shape))
    torch.testing.assert_close(bound, diffusion.prior_term(cfg, x) + decoder, rtol=1e-4,
                               atol=1e-3)


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_same_seed_same_images(sampler):
    cfg = tiny(sampler=sampler, eta=0.5)
    nets = random_net(cfg)
    out = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        out.append(diffusion.sample(cfg, nets, 4))
    assert out[0].dtype == torch.uint8 and out[0].shape == (4, *SHAPE)
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])


def test_ddim_with_eta_zero_draws_only_the_starting_noise():
    """eta = 0: the image is a deterministic function of x_T (one randn of the image batch)."""
    cfg = tiny(sampler="ddim", eta=0.0)
    nets = random_net(cfg)
    torch.manual_seed(5)
    diffusion.sample(cfg, nets, 4)
    after_sampling = torch.rand(3)
    torch.manual_seed(5)
    torch.randn(4, *SHAPE)
    assert torch.equal(after_sampling, torch.rand(3))


def test_conditional_bound_differs_by_label_on_common_noise():
    """The Bayes classifier's passes: reseeded per class, the same label gives the same bound
    (the same timesteps and noise) and another label a different one."""
    cfg = tiny(timesteps=20, nll_timesteps=4)
    nets = random_net(cfg, num_classes=10)
    x = images(6)
    out = {}
    for label in (0, 0, 3):
        torch.manual_seed(11)
        out.setdefault(label, []).append(
            diffusion.nll(cfg, nets, x, torch.full((6,), label)))
    assert torch.equal(out[0][0], out[0][1])
    assert (out[0][0] - out[3][0]).abs().min() > 1e-3
    with pytest.raises(ValueError, match="needs labels"):
        diffusion.nll(cfg, nets, x)


def test_config_and_shape_errors_say_what_to_change():
    with pytest.raises(ValueError, match="sample_steps"):
        diffusion.Config(timesteps=10, sample_steps=20).validate()
    with pytest.raises(ValueError, match="sampler must be one of"):
        diffusion.Config(sampler="euler").validate()
    with pytest.raises(ValueError, match="multiples of 8"):
        diffusion.build(diffusion.Config(levels=4), (1, 28, 28), 0)


# --- end to end ----------------------------------------------------------------------------

E2E_SETS = [f"diffusion.{k}={v}" for k, v in diffusion.TINY.items()] + [
    "train.conditional=true", "train.batch_size=32", "train.log_every=10",
    "train.checkpoint_every=30"]


@pytest.mark.slow
def test_cli_trains_a_conditional_model_then_eval_logs_bound_fid_ood_and_bayes(
        ray_local, workdir, mlflow_uri, domain_classifier, monkeypatch, capsys):
    """`genbench train --model diffusion --workers 2 --steps 30` (conditional), then `genbench
    eval` logs bpd_test (stamped a bound) and FID, and `--metrics ood,bayes` works on it."""
    from mlflow.tracking import MlflowClient

    from genbench.cli import main

    monkeypatch.setenv("GENBENCH_CACHE", str(domain_classifier))
    monkeypatch.setenv("GENBENCH_DATA", str(workdir / "data"))   # no MNIST: that set is skipped
    steps = 30
    sets = [arg for kv in E2E_SETS for arg in ("--set", kv)]
    assert main(["train", "--model", "diffusion", "--workers", "2", "--steps", str(steps),
                 "--experiment", "E", *sets]) == 0
    client = MlflowClient(mlflow_uri)
    run, = client.search_runs([client.get_experiment_by_name("E").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.params["train.workers"] == "2"
    # the sampler is part of the run's record
    params = run.data.params
    assert params["diffusion.sampler"] == "ddim" and params["diffusion.sample_steps"] == "5"
    history = client.get_metric_history(run_id, "mse")
    assert max(m.step for m in history) == steps and 0 < history[-1].value < 2
    capsys.readouterr()

    assert main(["eval", "--run-id", run_id, "--metrics", "bpd,fid", "--bpd-images", "64",
                 "--n-fake", "100", "--n-real", "100", "--device", "cpu", "--quiet"]) == 0
    run = client.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    assert 0 < metrics["bpd_test"] < 1000 and metrics["fid_domain"] > 0
    assert tags["eval.bpd"].startswith("variational bound"), tags["eval.bpd"]

    assert main(["eval", "--run-id", run_id, "--metrics", "ood,bayes", "--ood-sets",
                 "noise,constant", "--ood-images", "20", "--ood-background-steps", "2",
                 "--bayes-images", "20", "--device", "cpu", "--quiet"]) == 0
    metrics = client.get_run(run_id).data.metrics
    for key in ("bayes_accuracy", "bayes_ece", "ood_auroc_noise_bpd", "ood_auroc_constant_ratio"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["bayes_nll"] > 0

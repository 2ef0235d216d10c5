"""The Transformer family: causal by gradient, cached sampling equal to the uncached reference,
exact bits/dim, and the sub-pixel order it shares with the PixelCNN."""
import math

import pytest
import torch

from pipeline.models import transformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = transformer.Config(d_model=16, layers=2, heads=2, mlp_ratio=2)
SHAPES = [(1, 5, 5), (3, 3, 3)]
NUM_CLASSES = 4


def build(shape, conditional, cfg=TINY, seed=0):
    torch.manual_seed(seed)
    model = transformer.build(cfg, shape, NUM_CLASSES if conditional else 0)["model"]
    return model.eval()


def random_batch(shape, n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    return x, torch.randint(0, NUM_CLASSES, (n,), generator=gen)


ids = {"argnames": "conditional", "argvalues": [False, True],
       "ids": ["unconditional", "conditional"]}


@pytest.mark.parametrize(**ids)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_causal_by_gradient(shape, conditional):
    """d logit_t / d x_s is exactly 0 for s >= t and nonzero for s < t, with x_s the embedding of
    sub-pixel s in the sequence order (raster over pixels, channels within a pixel)."""
    model = build(shape, conditional)
    x, y = random_batch(shape, 1)
    seq_len = math.prod(shape)
    e = model.tok(transformer.to_sequence(x).long()).detach().requires_grad_()   # (1, L, d)
    logits = model.from_embeddings(e[:, :-1], y if conditional else None)        # (1, L, 256)
    assert logits.shape == (1, seq_len, 256)
    direction = torch.randn(256, generator=torch.Generator().manual_seed(2))
    for t in range(seq_len):
        grad, = torch.autograd.grad(logits[0, t] @ direction, e, retain_graph=True)
        per_s = grad[0].abs().sum(dim=1)                                           # (L,)
        assert (per_s[t:] == 0).all(), f"logit {t} sees sub-pixels {per_s[t:].nonzero().ravel()}"
        assert (per_s[:t] > 0).all(), f"logit {t} is blind to earlier sub-pixels"


def test_sequence_order_is_pixel_then_channel():
    """Sub-pixel (c, i, j) sits at (i * W + j) * C + c, the PixelCNN's order; and it round-trips."""
    shape = (3, 2, 4)
    x = torch.arange(math.prod(shape)).view(1, *shape)
    seq = transformer.to_sequence(x)[0]
    c_, h_, w_ = shape
    for c in range(c_):
        for i in range(h_):
            for j in range(w_):
                assert seq[(i * w_ + j) * c_ + c] == x[0, c, i, j]
    assert torch.equal(transformer.from_sequence(seq[None], shape), x)


@pytest.mark.parametrize(**ids)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cached_steps_match_the_full_forward(shape, conditional):
    """Teacher-forced through the KV cache, one token per step, the logits equal the parallel
    forward's at every position (float32)."""
    model = build(shape, conditional)
    x, y = random_batch(shape, 3)
    y = y if conditional else None
    full = model(x, y)                                                   # (3, L, 256)
    seq = transformer.to_sequence(x).long()
    caches = [transformer.KVCache(model.seq_len) for _ in model.blocks]
    with torch.no_grad():
        for t in range(model.seq_len):
            h = model.start_token(y, 3) if t == 0 else model.tok(seq[:, t - 1:t])
            step = model.step(h + model.pos.weight[t], caches)
            assert torch.allclose(step, full[:, t], atol=1e-5), f"position {t}"


@pytest.mark.parametrize(**ids)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cached_sampling_equals_uncached(shape, conditional):
    """The same seed gives the same images with and without the cache. The head is scaled up so
    the distributions are peaked and depend on the context (near-uniform ones would hide a wrong
    context); float64 keeps rounding from flipping a draw."""
    model = build(shape, conditional).double()
    with torch.no_grad():
        model.head.weight.mul_(200.0)
    nets = {"model": model}
    labels = torch.arange(4) % NUM_CLASSES if conditional else None
    out, pixels_done = [], []
    for draw in (transformer.sample, transformer.sample_reference):
        torch.manual_seed(7)
        out.append(draw(TINY, nets, 4, labels, progress=pixels_done.append))
    cached, uncached = out
    assert len(pixels_done) == 2 * shape[1] * shape[2]  # progress: once per pixel position
    assert cached.dtype == torch.uint8 and cached.shape == (4, *shape)
    assert torch.equal(cached, uncached)
    assert len(cached.unique()) > 4  # not a constant image
    torch.manual_seed(8)
    assert not torch.equal(transformer.sample(TINY, nets, 4, labels), cached)  # the seed matters


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 4, 4)], ids=["grey", "colour"])
def test_uniform_model_scores_eight_bits(shape):
    """Output head zeroed: every sub-pixel gets 1/256, so exactly 8.000 bits/dim."""
    model = build(shape, False)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    nets = {"model": model}
    x, _ = random_batch(shape, 5)
    out = transformer.loss(TINY, nets, x, None, "model")
    assert out["bpd"].item() == pytest.approx(8.0, abs=1e-6)
    assert out["loss"].item() == pytest.approx(math.log(256), abs=1e-6)
    nats = transformer.nll(TINY, nets, x)
    assert torch.allclose(nats, torch.full_like(nats, math.prod(shape) * math.log(256)))


def test_nll_matches_the_chain_rule():
    """nll is the sum over positions of -log softmax at the true level, computed by hand."""
    shape = (3, 2, 2)
    model = build(shape, True)
    x, y = random_batch(shape, 2)
    logits = model(x, y).double()
    seq = transformer.to_sequence(x).long()
    by_hand = -torch.log_softmax(logits, -1).gather(2, seq[..., None]).squeeze(2).sum(1)
    nats = transformer.nll(TINY, {"model": model}, x, y)
    assert torch.allclose(nats.double(), by_hand, rtol=1e-5)


def test_conditional_needs_labels():
    model = build((1, 2, 2), True)
    with pytest.raises(ValueError, match="pass labels"):
        transformer.sample(TINY, {"model": model}, 2)


@pytest.mark.parametrize("overrides, message", [
    ({"d_model": 30, "heads": 4}, "multiple of transformer.heads"),
    ({"layers": 0}, "transformer.layers must be positive"),
    ({"dropout": 1.0}, r"transformer.dropout must lie in \[0, 1\)"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        transformer.Config(**overrides).validate()


# --- end to end: the CLI trains it on 2 DDP workers and eval logs its exact bits/dim ----------

E2E_SETS = ["transformer.d_model=16", "transformer.layers=1", "transformer.heads=2",
            "transformer.mlp_ratio=2", "train.batch_size=32", "train.log_every=10",
            "train.checkpoint_every=15"]


@pytest.mark.slow
def test_cli_trains_on_two_workers_and_eval_logs_exact_bpd(ray_local, workdir, mlflow_uri,
                                                          capsys):
    """`genbench train --model transformer --workers 2 --steps 30`, then `genbench eval --metrics
    bpd`: bpd_test is logged, stamped exact, and equals -log p(x) of the checkpoint's networks
    recomputed here on the same test images."""
    from mlflow.tracking import MlflowClient

    from genbench.cli import main
    from pipeline import checkpoint as ckpt
    from pipeline.data import load_split

    steps, images = 30, 200
    sets = [arg for kv in E2E_SETS for arg in ("--set", kv)]
    assert main(["train", "--model", "transformer", "--workers", "2", "--steps", str(steps),
                 "--experiment", "E", *sets]) == 0
    client = MlflowClient(mlflow_uri)
    run, = client.search_runs([client.get_experiment_by_name("E").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.params["train.workers"] == "2"
    history = client.get_metric_history(run_id, "bpd")
    assert max(m.step for m in history) == steps and 0 < history[-1].value < 8.5
    capsys.readouterr()

    assert main(["eval", "--run-id", run_id, "--metrics", "bpd", "--bpd-images", str(images),
                 "--device", "cpu", "--quiet"]) == 0
    run = client.get_run(run_id)
    bpd_test = run.data.metrics["bpd_test"]
    assert run.data.tags["eval.bpd"].startswith("exact"), run.data.tags["eval.bpd"]
    assert "bpd_test" in capsys.readouterr().out

    payload = ckpt.load(client.download_artifacts(run_id, "checkpoint/checkpoint.pt",
                                                  str(workdir)))
    assert payload["step"] == steps
    cfg = transformer.Config(**payload["config"]["transformer"])
    test = load_split("fashion-mnist", "test")
    nets = transformer.build(cfg, test.image_shape, 0)
    nets["model"].load_state_dict(payload["nets"]["model"])
    nats = transformer.nll(cfg, nets, test.images[:images]).double().sum().item()
    assert bpd_test == pytest.approx(nats / (images * 784 * math.log(2)), abs=1e-5)

"""pipeline/loop.fit under Ray Train with 2 real workers (gloo): the ranks stay in sync, and 2
workers on a global batch take the same steps as 1 worker on that batch, with the same logged
losses. fit() itself runs on each worker: its DDP wrapping (build_nets), sharding
(ShardedBatches), phases, optimizers and metric all-reduce, as `genbench train` runs them."""
import shutil
import sys

import pytest
import ray.cloudpickle
import torch

from pipeline import checkpoint as ckpt
from pipeline.config import Config
from pipeline.data import ImageData
from pipeline.loop import Context, build_nets, fit

# The workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # a Ray Train run

STEPS = 3          # three optimizer steps on three different global batches
GLOBAL_BATCH = 8
TRAIN = {"steps": STEPS, "batch_size": GLOBAL_BATCH, "seed": 3, "checkpoint_every": 1,
         "log_every": 1}
CONFIGS = {
    # no BatchNorm and no sampling noise: the 1- and 2-worker steps must agree
    "ae": {"model": "ae", "ae": {"width": 4, "latent_dim": 4, "lr": 1e-2}},
    # BatchNorm in G and D, two phases: the DDP trap of DESIGN.md must not bite
    "gan": {"model": "gan", "gan": {"width": 4, "latent_dim": 4}},
}


def config(model: str, workers: int) -> Config:
    return Config.from_dict({**CONFIGS[model], "data": {"val_fraction": 0.0},
                             "train": {**TRAIN, "workers": workers}})


def fixed_data() -> ImageData:
    gen = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=gen)
    return ImageData(images, torch.arange(64), 64)  # label = index: shards are comparable


def run_fit(model: str, rank: int, world: int, out) -> dict:
    """fit() on this rank; returns the metrics it reported per step and, through spies on
    build_nets and ShardedBatches (the real code runs; the spies keep what it made), the
    parameters it ended with and the images it trained on. Rank 0's checkpoints are copied to
    out/ as Ray's storage would."""
    import pipeline.loop as loop

    built, seen, reported = [], [], {}
    real_build, real_batches = loop.build_nets, loop.ShardedBatches

    class SeenBatches(real_batches):
        def batch(self, step):
            x, y = super().batch(step)
            seen.extend(y.tolist())
            return x, y

    loop.build_nets = lambda *args: built.append(real_build(*args)) or built[-1]
    loop.ShardedBatches = SeenBatches

    def report(metrics, checkpoint_dir):
        reported[int(metrics["step"])] = metrics
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, f"{out}/{model}-w{world}-{int(metrics['step'])}")
    try:
        fit(config(model, world), Context(rank=rank, world=world), report, data=fixed_data())
    finally:
        loop.build_nets, loop.ShardedBatches = real_build, real_batches
    nets = built[0][0]
    params = {f"{k}.{n}": p.detach().clone() for k, net in nets.items()
              for n, p in getattr(net, "module", net).named_parameters()}
    return {"params": params, "reported": reported, "seen": seen}


def worker(config: dict) -> None:
    import ray.train

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    results = {model: run_fit(model, rank, world, config["out"]) for model in CONFIGS}
    torch.save(results, f"{config['out']}/rank{rank}.pt")
    ray.train.report({"rank": rank})  # every rank reports the same number of times


@pytest.fixture(scope="module")
def two_workers(ray_local, tmp_path_factory):
    """One TorchTrainer with 2 workers (a launch costs ~20 s) fits every family."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = tmp_path_factory.mktemp("ddp")
    trainer = TorchTrainer(worker, train_loop_config={"out": str(out)},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                           run_config=RunConfig(name="ddp-test", storage_path=str(out / "ray")))
    trainer.fit()
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("model", list(CONFIGS))
def test_parameters_identical_on_both_ranks(two_workers, model):
    _, ranks = two_workers
    rank0, rank1 = (r[model] for r in ranks)
    assert set(rank0["seen"]).isdisjoint(rank1["seen"])  # the ranks trained on different data
    assert rank0["params"].keys() == rank1["params"].keys()
    for name, p0 in rank0["params"].items():
        assert torch.isfinite(p0).all(), f"{model}: {name} is not finite"
        assert torch.equal(p0, rank1["params"][name]), f"{model}: {name} differs across ranks"
    assert sorted(rank0["reported"]) == sorted(rank1["reported"]) == list(range(1, STEPS + 1))


def test_two_worker_ae_fit_equals_one_worker_fit(two_workers, tmp_path):
    """Same global batches, same seed: 1 worker without DDP, here, takes the same steps;
    gradients are averaged across ranks (the mean over the global batch, not the sum)."""
    out, ranks = two_workers
    single = run_fit("ae", 0, 1, tmp_path)
    ddp = ranks[0]["ae"]
    assert sorted(ddp["seen"] + ranks[1]["ae"]["seen"]) == sorted(single["seen"])
    initial = build_nets(config("ae", 1), fixed_data(), torch.device("cpu"), 1)[0]["model"]
    start = dict(initial.named_parameters())
    for name, p in single["params"].items():
        torch.testing.assert_close(ddp["params"][name], p, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(p, start[name.removeprefix("model.")])  # real updates
    # the logged loss is the mean over both ranks' shards: the 1-worker loss on the global batch
    for step, metrics in single["reported"].items():
        assert ddp["reported"][step]["mse"] == pytest.approx(metrics["mse"], rel=1e-5), step
    # and the checkpoint rank 0 handed over holds those parameters
    saved = ckpt.load(out / f"ae-w2-{STEPS}")
    for name, tensor in saved["nets"]["model"].items():
        if f"model.{name}" in ddp["params"]:
            assert torch.equal(tensor, ddp["params"][f"model.{name}"])

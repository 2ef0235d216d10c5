"""DDP under Ray Train with 2 real workers: ranks stay in sync, and 2 workers on a global batch
take the same step as 1 worker on that batch. Uses the real code path: pipeline.loop.build_nets
(DDP wrapping), ShardedBatches, and each family's loss and make_optimizers."""
import sys

import pytest
import ray.cloudpickle
import torch

from pipeline.config import Config
from pipeline.data import ImageData, ShardedBatches
from pipeline.loop import build_nets
from pipeline.models import FAMILIES
from pipeline.models.layers import unwrap

# The workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 2          # two optimizer steps on two different global batches
GLOBAL_BATCH = 8
CONFIGS = {
    # no BatchNorm and no sampling noise: the 1- and 2-worker steps must agree exactly
    "ae": {"model": "ae", "ae": {"width": 4, "latent_dim": 4, "lr": 1e-2},
           "train": {"batch_size": GLOBAL_BATCH, "seed": 3}},
    # BatchNorm in G and D, two phases: the DDP trap of DESIGN.md must not bite
    "gan": {"model": "gan", "gan": {"width": 4, "latent_dim": 4},
            "train": {"batch_size": GLOBAL_BATCH, "seed": 3}},
}


def fixed_data() -> ImageData:
    gen = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=gen)
    return ImageData(images, torch.arange(64), 64)  # label = index: shards are comparable


def train_steps(model: str, rank: int, world: int) -> dict:
    """STEPS optimizer steps of the family on this rank's shard; returns the parameters after
    the last step and the (all-reduced) gradients of the first."""
    cfg = Config.from_dict({**CONFIGS[model], "train": {**CONFIGS[model]["train"],
                                                         "workers": world}})
    family, data = FAMILIES[model], fixed_data()
    nets, opts = build_nets(cfg, data, torch.device("cpu"), world)
    batches = ShardedBatches(data, cfg.train.batch_size, rank, world, cfg.train.seed)
    first_grads, seen = {}, []
    for step in range(STEPS):
        x, y = batches.batch(step)
        seen += y.tolist()
        for phase in family.PHASES:
            opts[phase].zero_grad(set_to_none=True)
            out = family.loss(cfg.family, nets, x, None, phase)
            out["loss"].backward()
            if step == 0:
                first_grads[phase] = {n: p.grad.clone() for n, p in  # phase = net's name
                                      unwrap(nets[phase]).named_parameters()
                                      if p.grad is not None}
            opts[phase].step()
    params = {f"{k}.{n}": p.detach().clone() for k, net in nets.items()
              for n, p in unwrap(net).named_parameters()}
    return {"params": params, "grads": first_grads, "seen": seen}


def worker(config: dict) -> None:
    import ray.train

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    results = {model: train_steps(model, rank, world) for model in config["models"]}
    torch.save(results, f"{config['out']}/rank{rank}.pt")
    ray.train.report({"rank": rank})  # every rank reports the same number of times


@pytest.fixture(scope="module")
def two_workers(ray_local, tmp_path_factory):
    """One TorchTrainer with 2 workers (a launch costs ~20 s) runs every family's steps."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = tmp_path_factory.mktemp("ddp")
    trainer = TorchTrainer(worker, train_loop_config={"out": str(out), "models": list(CONFIGS)},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                           run_config=RunConfig(name="ddp-test", storage_path=str(out / "ray")))
    trainer.fit()
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("model", list(CONFIGS))
def test_parameters_identical_on_both_ranks(two_workers, model):
    rank0, rank1 = (r[model] for r in two_workers)
    assert set(rank0["seen"]).isdisjoint(rank1["seen"])  # the ranks trained on different data
    assert rank0["params"].keys() == rank1["params"].keys()
    for name, p0 in rank0["params"].items():
        assert torch.equal(p0, rank1["params"][name]), f"{model}: {name} differs across ranks"


def test_two_worker_ae_update_equals_one_worker(two_workers):
    """Same global batches, same seed: 1 worker without DDP, here, takes the same steps."""
    single = train_steps("ae", rank=0, world=1)
    ddp = two_workers[0]["ae"]
    assert sorted(ddp["seen"] + two_workers[1]["ae"]["seen"]) == sorted(single["seen"])
    # gradients are averaged across ranks: the mean over the global batch, not the sum
    for name, g in single["grads"]["model"].items():
        torch.testing.assert_close(ddp["grads"]["model"][name], g, rtol=1e-4, atol=1e-7)
    initial = build_nets(Config.from_dict(CONFIGS["ae"]), fixed_data(), torch.device("cpu"), 1)[0]
    moved = 0
    for name, p in single["params"].items():
        torch.testing.assert_close(ddp["params"][name], p, rtol=1e-5, atol=1e-6)
        start = dict(initial["model"].named_parameters())[name.removeprefix("model.")]
        moved += int(not torch.allclose(p, start))
    assert moved == len(single["params"])  # the comparison is of real updates


def test_gan_two_worker_step_is_finite(two_workers):
    params = two_workers[0]["gan"]["params"]
    assert any(k.startswith("discriminator.") for k in params)
    assert all(torch.isfinite(p).all() for p in params.values())
    assert two_workers[0]["gan"]["grads"].keys() == {"discriminator", "generator"}

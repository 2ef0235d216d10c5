"""Ray side of `genbench eval --workers N`: bits/dim split across N Ray tasks.

eval/ never imports Ray; this module runs eval.likelihood.nll_sums on shards (rank r of N
scores the test batches b with b % N == r, each seeded by its batch index) and adds the sums
and counts before dividing, so the result equals the one-process number.
"""
from __future__ import annotations

import ray
import torch


@ray.remote(num_cpus=1)
def _nll_shard(payload: dict, rank: int, world: int, k: int, images: int, batch_size: int,
               seed: int) -> tuple[float, int, int]:
    from eval.likelihood import nll_sums
    from eval.load import model_from_payload
    from pipeline.data import ImageData

    torch.set_num_threads(1)
    model = model_from_payload(payload, "cpu", "checkpoint")
    test = model.test
    data = ImageData(test.images[:images], test.labels[:images], test.num_classes)
    sums = nll_sums(model.cfg, model.nets, data, k, batch_size, rank, world, seed)
    return sums.nats, sums.images, sums.dims


def ray_nll_sums(payload: dict, *, k: int, images: int, batch_size: int, seed: int,
                 workers: int, address: str | None = None, verbose: bool = False):
    """Sum of -log p(x) over the first `images` test images, computed by `workers` Ray tasks."""
    from eval.likelihood import NLLSums
    from pipeline.cluster import init_ray

    init_ray(address, verbose)
    ref = ray.put(payload)
    parts = ray.get([_nll_shard.remote(ref, rank, workers, k, images, batch_size, seed)
                     for rank in range(workers)])
    total = NLLSums(0.0, 0, 0)
    for nats, count, dims in parts:
        total = total + NLLSums(nats, count, dims)
    return total

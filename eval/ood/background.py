"""The background model of the likelihood-ratio score (Ren et al. 2019).

A model of the same family and config, trained briefly, unconditionally, on the run's train images
with a fraction of their sub-pixels replaced by uniform noise. It learns the population-level
statistics (smooth backgrounds, pixel histograms) that dominate raw likelihoods but not the
semantics the long-trained model learns; bpd(model) - bpd(background) keeps the latter. It runs
the same training loop as `genbench train` (pipeline.loop.fit) in this process, without Ray.
"""
from __future__ import annotations

import dataclasses

import torch

from pipeline import checkpoint as ckpt
from pipeline.config import Config
from pipeline.data import ImageData
from pipeline.loop import Context, build_nets, fit

MUTATION_RATE = 0.2       # Ren et al. tune it in [0.1, 0.3]
BATCH_SIZE = 64


def perturb(images: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    """Each sub-pixel replaced, with probability rate, by a uniform value in 0..255."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(images.shape, generator=gen) < rate
    noise = torch.randint(0, 256, images.shape, generator=gen, dtype=torch.uint8)
    return torch.where(mask, noise, images)


def recipe(steps: int, rate: float = MUTATION_RATE, batch_size: int = BATCH_SIZE) -> str:
    return (f"same family and config, unconditional, {steps} steps of batch {batch_size} on the "
            f"train split with {rate:g} of sub-pixels replaced by uniform noise (one fixed "
            f"perturbed copy, seeded)")


def background_batch(cfg: Config, n_train: int) -> int:
    """The run's own batch size, at most BATCH_SIZE (and the training images): a short run of a
    costly family (a Transformer of 784 tokens) costs what that many of its training steps do."""
    return min(BATCH_SIZE, cfg.train.batch_size, n_train)


def train_background(cfg: Config, train: ImageData, steps: int, device="cpu", seed: int = 0,
                     rate: float = MUTATION_RATE, batch_size: int | None = None) -> dict:
    """The background model's nets, in eval mode (batch_size: background_batch's unless given)."""
    batch_size = min(batch_size or background_batch(cfg, len(train)), len(train))
    t = dataclasses.replace(cfg.train, steps=steps, epochs=None, batch_size=batch_size,
                            workers=1, conditional=False, seed=seed)
    data = ImageData(perturb(train.images, rate, seed), train.labels, train.num_classes)
    return fit_in_process(dataclasses.replace(cfg, train=t), data, device)


def fit_in_process(cfg: Config, data: ImageData, device="cpu") -> dict:
    """Train cfg's model on `data` with the training loop of `genbench train`, in this process
    (one rank, no Ray, no MLflow, no validation); returns the trained nets in eval mode."""
    t = cfg.train
    steps = t.steps or max(1, round((t.epochs or 1.0) * (len(data) // t.batch_size)))
    t = dataclasses.replace(t, steps=steps, epochs=None, workers=1, log_every=steps,
                            eval_every=steps, checkpoint_every=steps)
    # val_fraction 0: no validation pass (the train images come in as `data`, already split)
    cfg = dataclasses.replace(cfg, train=t, data=dataclasses.replace(cfg.data, val_fraction=0.0))
    payload = {}

    def report(metrics, checkpoint_dir):
        if checkpoint_dir is not None:  # the last step's checkpoint: the trained weights
            payload.update(ckpt.load(checkpoint_dir))

    fit(cfg, Context(device=torch.device(device)), report, data=data, val=None)
    nets, opts = build_nets(cfg, data, torch.device(device), 1)
    ckpt.restore(payload, nets, opts, source="in-process training")
    for net in nets.values():
        net.eval().requires_grad_(False)
    return nets

"""Likelihood on the test split, in bits per dimension, and reconstruction error for the AE.

bpd = sum of -log p(x) in nats / (images * sub-pixels * ln 2). The models' likelihoods are
discrete (256-way softmax and discretized logistic over 8 bits), so no dequantization offset is
needed: a uniform model scores exactly 8 bits/dim. A Bernoulli decoder models binarized data,
where a uniform model scores 1: its number is bpd_binarized_test, never bpd_test.

What the number is comes from the family (LIKELIHOOD "exact" or "bound", LIKELIHOOD_NOTE): e.g.
exact for the autoregressive models, the importance-weighted bound with k samples for the VAE.
A family without one (LIKELIHOOD None) is reported as not applicable, never as a number; one
that can reconstruct gets mse_test and psnr_test instead.

Sums and counts are kept apart until the end, so shards (ranks, Ray tasks) add up exactly.
Work is split by batch: batch b goes to rank b % world and draws its randomness from
(seed, b), so the result does not depend on the number of workers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from eval.progress import bar
from pipeline import schema
from pipeline.data import ImageData
from pipeline.models import FAMILIES, can
from pipeline.models.layers import to_float


def pixel_bits(family, family_cfg) -> int:
    """Bits per sub-pixel of what the family's likelihood models (8 unless it says otherwise)."""
    return family.pixel_bits(family_cfg) if hasattr(family, "pixel_bits") else 8


def data_description(bits: int) -> str:
    if bits == 8:
        return "8-bit pixels (256 levels per sub-pixel; a uniform model scores 8 bits/dim)"
    if bits == 1:
        return ("binarized pixels (x > 127, 1 bit per sub-pixel; a uniform model scores 1 "
                "bit/dim): not comparable with 8-bit bits/dim")
    return f"{bits}-bit pixels (a uniform model scores {bits} bits/dim)"


@dataclass(frozen=True)
class NLLSums:
    nats: float   # sum over images of -log p(x), nats
    images: int
    dims: int     # sub-pixels per image (C * H * W)

    def __add__(self, other: "NLLSums") -> "NLLSums":
        if self.images and other.images and self.dims != other.dims:
            raise ValueError(f"cannot add NLL sums over {self.dims} and {other.dims} dims")
        return NLLSums(self.nats + other.nats, self.images + other.images,
                       self.dims or other.dims)

    @property
    def bits_per_dim(self) -> float:
        if not self.images:
            raise ValueError("no images were scored")
        return self.nats / (self.images * self.dims * math.log(2))


def batch_seed(seed: int, batch: int) -> int:
    return seed * 1_000_003 + batch


def my_batches(n: int, batch_size: int, rank: int, world: int) -> list[tuple[int, int, int]]:
    """(batch index, start, stop) of the batches this rank scores."""
    return [(b, start, min(start + batch_size, n))
            for b, start in enumerate(range(0, n, batch_size)) if b % world == rank]


@torch.no_grad()
def nll_sums(cfg, nets, data: ImageData, k: int = 1, batch_size: int = 500, rank: int = 0,
             world: int = 1, seed: int = 0, device="cpu", quiet: bool = True) -> NLLSums:
    """This rank's share of sum -log p(x) over `data` (cfg: the run's Config)."""
    family = FAMILIES[cfg.model]
    if not can(family, "nll"):
        raise ValueError(f"{cfg.model}: {family.LIKELIHOOD_NOTE}")
    for net in nets.values():
        net.eval()
    total, count = 0.0, 0
    batches = my_batches(len(data), batch_size, rank, world)
    with bar(sum(stop - start for _, start, stop in batches), "bits/dim", "img", quiet) as progress:
        for b, start, stop in batches:
            x = data.images[start:stop].to(device)
            y = data.labels[start:stop].to(device) if cfg.train.conditional else None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(batch_seed(seed, b))
                nats = family.nll(cfg.family, nets, x, y, k=k)
            total += nats.double().sum().item()
            count += len(x)
            progress.update(len(x))
    return NLLSums(total, count, data.images[0].numel())


@torch.no_grad()
def reconstruction_metrics(cfg, nets, data: ImageData, batch_size: int = 500, device="cpu",
                           quiet: bool = True) -> dict[str, float]:
    """mse_test on the training loss's [-1, 1] scale (comparable with val_mse) and psnr_test in
    dB for pixels in [0, 1] (peak 1, i.e. 10 log10(4 / mse) on that scale)."""
    family = FAMILIES[cfg.model]
    for net in nets.values():
        net.eval()
    sq, count = 0.0, 0
    with bar(len(data), "reconstructions", "img", quiet) as progress:
        for start in range(0, len(data), batch_size):
            x = data.images[start:start + batch_size].to(device)
            y = data.labels[start:start + batch_size].to(device) if cfg.train.conditional else None
            recon = family.reconstruct(cfg.family, nets, x, y)
            sq += (to_float(recon) - to_float(x)).double().pow(2).sum().item()
            count += x.numel()
            progress.update(len(x))
    mse = sq / count
    return {schema.MSE_TEST: mse, schema.PSNR_TEST: 10 * math.log10(4.0 / max(mse, 1e-12))}

"""Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
Generative Models", ICML): fidelity and diversity from k-NN balls around the REAL features.

    radius_i  = distance from real_i to its k-th nearest other real point
    density   = 1/(k M) * sum_j #{i : fake_j inside ball(real_i, radius_i)}   (1 when fake ~ real)
    coverage  = 1/N * #{i : some fake_j inside ball(real_i, radius_i)}        (in [0, 1])

N real and M fake feature vectors (the same features as FID). The numbers equal those of the
reference implementation (the `prdc` package, `compute_prdc`; tests/test_density_coverage.py
checks it to 1e-6), with one difference, prdc issue #7: a fake point that is a copy of real_i
(distance zero up to rounding) lies in real_i's ball even when the radius is zero too (real_i
has k or more copies in the real set), where prdc's strict `<` leaves identical sets with density
and coverage 0. Elsewhere "inside" is prdc's `distance < radius`.

Implemented here rather than depending on prdc: prdc prints on every call, needs scipy and joblib,
and holds the N x M and N x N distance matrices at once; this works in chunks of real rows, in
float64, on the features' own device.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline.errors import ConfigError

DEFAULT_K = 5     # the paper's recommendation (with 10k real and fake samples)
CHUNK = 1024      # real rows per step: CHUNK x max(N, M) float64 distances in memory
# A squared distance below COPY_TOL * (|a|^2 + |b|^2) is zero up to float64 rounding (the
# error of |a|^2 + |b|^2 - 2 a.b is ~D * 1e-16 of it for D features): the points are copies.
COPY_TOL = 1e-10


class DensityCoverage(NamedTuple):
    density: float
    coverage: float


def _squared_distances(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor,
                       b_sq: torch.Tensor) -> torch.Tensor:
    return (a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def _features(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or len(x) == 0:
        raise ConfigError(f"{name} features must be a non-empty (n, features) array, got shape "
                          f"{tuple(x.shape)}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ConfigError(f"{name} features hold nan or inf; check the extractor's output")
    return x


def nearest_neighbour_radii(real: torch.Tensor, k: int, chunk: int = CHUNK) -> torch.Tensor:
    """Distance from each real point to its k-th nearest other real point (N,): the k+1-th
    smallest distance counting the point itself, as prdc."""
    sq = (real * real).sum(1)
    parts = []
    for start in range(0, len(real), chunk):
        d2 = _squared_distances(real[start:start + chunk], sq[start:start + chunk], real, sq)
        parts.append(d2.topk(k + 1, dim=1, largest=False).values[:, -1].sqrt())
    return torch.cat(parts)


def density_coverage(*, real, fake, k: int = DEFAULT_K, chunk: int = CHUNK) -> DensityCoverage:
    """Density and coverage of `fake` against `real`: float arrays (n, features) of the same
    extractor (torch tensors or numpy arrays), k the neighbourhood size (1 <= k < n_real).
    Keyword-only, so that real and fake cannot be swapped by position."""
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ConfigError(f"real and fake features differ in width ({real.shape[1]} vs "
                          f"{fake.shape[1]}); compute both with the same extractor")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < len(real):
        raise ConfigError(f"density/coverage needs 1 <= k < the number of real points "
                          f"({len(real)}), got k={k!r}")
    fake = fake.to(real.device)
    radii = nearest_neighbour_radii(real, k, chunk)
    real_sq, fake_sq = (real * real).sum(1), (fake * fake).sum(1)
    inside_count = torch.zeros(len(fake), dtype=torch.float64, device=real.device)
    covered = 0
    for start in range(0, len(real), chunk):
        rows = slice(start, start + chunk)
        d2 = _squared_distances(real[rows], real_sq[rows], fake, fake_sq)
        inside = d2.sqrt() < radii[rows, None]
        inside |= d2 <= COPY_TOL * (real_sq[rows, None] + fake_sq[None, :])   # prdc #7
        inside_count += inside.sum(0)
        covered += int(inside.any(1).sum())
    return DensityCoverage(density=float(inside_count.sum()) / (k * len(fake)),
                           coverage=covered / len(real))

"""Paired bootstrap replicates of FID and KID: what eval saves so that the report can compare
families (report/significance.py). In eval, not the report: eval computes them from the
features it already holds, and eval sits below report."""
from __future__ import annotations

from typing import Callable

import torch

from pipeline.errors import ConfigError

RESAMPLES = 200
FAKE_STREAM = 1_000_003     # offsets the generated sets' index generator from the real set's

Metric = Callable[[torch.Tensor, torch.Tensor], float]   # (generated, real) features -> value


def metric_function(name: str, kid_subset_size: int | None = None) -> Metric:
    """eval/fidelity.py's estimator for 'fid' or 'kid' (KID's mean over subsets, on subsets of
    kid_subset_size, which must not exceed either set: pass the eval's --kid-subset-size)."""
    from eval import fidelity

    if name == "fid":
        return fidelity.fid
    if name == "kid":
        size = kid_subset_size or fidelity.KID_SUBSET_SIZE

        def kid(fake, real):
            return fidelity.kid(fake, real, size)[0]
        return kid
    raise ConfigError(f"no significance estimator for metric {name!r}; use fid or kid, or pass "
                      f"a function (generated, real) -> float")


def _metric(metric: str | Metric) -> tuple[str, Metric]:
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    return metric, metric_function(metric)


def bootstrap_replicates(fake: torch.Tensor, real: torch.Tensor, metric: str | Metric,
                         resamples: int = RESAMPLES, seed: int = 0) -> torch.Tensor:
    """(resamples,) float64: the metric on `resamples` bootstrap resamples of one family's
    generated features and the real features (N, F). Resample b's real indices depend only on
    (seed, len(real), b), so every family evaluated with the same seed against the same real set
    shares them: pass the replicates of all families to `pairwise_bootstrap`."""
    if resamples < 2:
        raise ConfigError(f"the bootstrap needs at least 2 resamples, got {resamples}")
    _, fn = _metric(metric)
    real_gen = torch.Generator().manual_seed(seed)
    fake_gen = torch.Generator().manual_seed(seed + FAKE_STREAM)
    values = []
    for _ in range(resamples):
        j = torch.randint(len(real), (len(real),), generator=real_gen)
        i = torch.randint(len(fake), (len(fake),), generator=fake_gen)
        values.append(fn(fake[i], real[j]))
    return torch.tensor(values, dtype=torch.float64)

"""Significance in the ranking: for one metric, the difference between each pair of families
with a 95% interval, and ranks in which families that do not separate share a rank ("tied").

Two paths:

- one seed: a bootstrap over the generated and the real feature sets. Each family's eval draws
  `bootstrap_replicates`: B resamples, the real indices drawn from a generator seeded by `seed`
  alone, so resample b uses the SAME real indices in every family (given the same real set and
  seed) and the differences are paired: the real set's own noise, shared by all families, cancels.
  Replicates can be computed where the features are (one eval run per family) and combined later
  by `pairwise_bootstrap`; `compare_families` does both in one process. The interval of a
  difference is its bootstrap percentile interval shifted back by the bootstrap's bias estimate,
  as eval/fidelity.py's `bootstrap_intervals` does for one family (resampling repeats images,
  which raises FID on its own).
- N >= 3 seeds: `seed_ranking`, a Welch t interval over the seeds' estimates (the seed is the
  replication unit: a new seed redraws the weights, the training order and the samples). The
  spreads are reported apart: `seed_sd`, the standard deviation of the seeds' estimates, and
  `sample_sd`, the root mean per-seed bootstrap variance (what another draw of samples moves the
  number by, for a fixed model); `seed_only_sd` = sqrt(max(seed_sd^2 - sample_sd^2, 0)) is the
  part of the seed-to-seed spread that sampling does not explain.

Ranks (RANK_RULE): families sorted by the estimate, best first; a family shares the rank of the
family just above it when the 95% interval of their difference contains 0. Ties chain (A~B and
B~C put A, B, C in one group even if A and C separate), which makes "tied" transitive and errs
towards claiming less. A group's rank is 1 + the number of families above it ("1, 1, 3").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from eval.bootstrap import (FAKE_STREAM, RESAMPLES, Metric, _metric,  # noqa: F401 (re-exported)
                            bootstrap_replicates, metric_function)
from pipeline.errors import ConfigError

LEVEL = 0.95
LOWER_IS_BETTER = {"fid", "kid"}
RANK_RULE = ("Ranks: families sorted by the estimate; a family shares the rank of the one above "
             "it (tied) when the 95% interval of their difference contains 0; ties chain.")



@dataclass(frozen=True)
class Difference:
    """estimate = value(first) - value(second), with its interval."""
    first: str
    second: str
    estimate: float
    low: float
    high: float

    @property
    def separated(self) -> bool:
        return not self.low <= 0.0 <= self.high

    def flipped(self) -> "Difference":
        return Difference(self.second, self.first, -self.estimate, -self.high, -self.low)


@dataclass(frozen=True)
class Spread:
    """A family's spread over seeds: seed-to-seed and sample-to-sample, apart."""
    seeds: int
    mean: float
    seed_sd: float                 # sd of the seeds' estimates
    sample_sd: float | None        # root mean per-seed bootstrap variance (None: not measured)

    @property
    def seed_only_sd(self) -> float | None:
        if self.sample_sd is None:
            return None
        return math.sqrt(max(self.seed_sd ** 2 - self.sample_sd ** 2, 0.0))


@dataclass(frozen=True)
class Ranking:
    metric: str
    higher_is_better: bool
    estimates: dict[str, float]              # per family (the mean over seeds on that path)
    differences: dict[tuple[str, str], Difference]   # (better, worse) by estimate
    ranks: dict[str, int]
    method: str                              # how the intervals were made, one line
    spreads: dict[str, Spread] = field(default_factory=dict)   # seed path only

    def difference(self, first: str, second: str) -> Difference:
        found = self.differences.get((first, second))
        return found if found is not None else self.differences[(second, first)].flipped()

    def tied(self, family: str) -> bool:
        return sum(r == self.ranks[family] for r in self.ranks.values()) > 1

    @property
    def note(self) -> str:
        """The line under the table: the intervals' method and the rank rule."""
        return f"{self.method} {RANK_RULE}"


def rank_with_ties(estimates: Mapping[str, float],
                   differences: Mapping[tuple[str, str], Difference],
                   higher_is_better: bool) -> dict[str, int]:
    """RANK_RULE: sort best first; a family joins the group above when its difference with the
    family just above it is not separated. differences: keyed by (first, second) either way."""
    order = sorted(estimates, key=lambda f: -estimates[f] if higher_is_better else estimates[f])
    ranks: dict[str, int] = {}
    for position, family in enumerate(order):
        if position == 0:
            ranks[family] = 1
            continue
        above = order[position - 1]
        pair = differences.get((above, family)) or differences[(family, above)]
        ranks[family] = ranks[above] if not pair.separated else position + 1
    return ranks


def _ordered_pairs(estimates: Mapping[str, float], higher_is_better: bool):
    order = sorted(estimates, key=lambda f: -estimates[f] if higher_is_better else estimates[f])
    return [(a, b) for n, a in enumerate(order) for b in order[n + 1:]]


def _check_families(estimates: Mapping) -> None:
    if len(estimates) < 2:
        raise ConfigError(f"a ranking needs at least 2 families, got {len(estimates)}")


def pairwise_bootstrap(estimates: Mapping[str, float], replicates: Mapping[str, torch.Tensor],
                       *, metric: str, higher_is_better: bool | None = None,
                       level: float = LEVEL) -> Ranking:
    """One seed: each family's estimate on the full sets and its `bootstrap_replicates` (same
    seed, same real set, same number of resamples). The interval of value(a) - value(b) is the
    percentile interval of the paired replicate differences, shifted by their bias estimate."""
    _check_families(estimates)
    if set(estimates) != set(replicates):
        raise ConfigError(f"estimates and replicates name different families "
                          f"({sorted(estimates)} vs {sorted(replicates)})")
    lengths = {f: len(r) for f, r in replicates.items()}
    if len(set(lengths.values())) != 1:
        raise ConfigError(f"bootstrap replicates differ in number ({lengths}); draw them all "
                          f"with the same resamples and seed, against the same real set")
    higher = _direction(metric, higher_is_better)
    probs = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    differences = {}
    for a, b in _ordered_pairs(estimates, higher):
        estimate = estimates[a] - estimates[b]
        values = torch.as_tensor(replicates[a], dtype=torch.float64) - \
            torch.as_tensor(replicates[b], dtype=torch.float64)
        bias = values.mean().item() - estimate
        low, high = (torch.quantile(values, probs) - bias).tolist()
        differences[(a, b)] = Difference(a, b, estimate, low, high)
    method = (f"{level:.0%} intervals of pairwise differences: paired bootstrap over the generated "
              f"and real features ({lengths[next(iter(lengths))]} resamples, the real resample "
              f"shared by all families).")
    return Ranking(metric, higher, dict(estimates), differences,
                   rank_with_ties(estimates, differences, higher), method)


def compare_families(fake: Mapping[str, torch.Tensor], real: torch.Tensor, metric: str | Metric,
                     *, resamples: int = RESAMPLES, seed: int = 0,
                     higher_is_better: bool | None = None, level: float = LEVEL) -> Ranking:
    """pairwise_bootstrap with everything in one process: {family: generated features (N, F)}
    and the real features (N, F) of the same extractor layer."""
    name, fn = _metric(metric)
    estimates = {f: fn(x, real) for f, x in fake.items()}
    replicates = {f: bootstrap_replicates(x, real, fn, resamples, seed) for f, x in fake.items()}
    return pairwise_bootstrap(estimates, replicates, metric=name,
                              higher_is_better=higher_is_better, level=level)


def _direction(metric: str, higher_is_better: bool | None) -> bool:
    if higher_is_better is not None:
        return higher_is_better
    if metric.split("_")[0] in LOWER_IS_BETTER:
        return False
    raise ConfigError(f"say whether a higher {metric!r} is better (higher_is_better=...)")


def _t_quantile(p: float, df: float) -> float:
    from scipy.stats import t   # scipy comes with torch-fidelity

    return float(t.ppf(p, df))


def seed_ranking(per_seed: Mapping[str, Sequence[float]], *, metric: str,
                 sample_replicates: Mapping[str, Sequence[torch.Tensor]] | None = None,
                 higher_is_better: bool | None = None, level: float = LEVEL) -> Ranking:
    """N >= 3 seeds: {family: the metric of each seed's run} and optionally {family: each seed's
    bootstrap replicates} (for the sample-to-sample spread). The interval of mean(a) - mean(b)
    is Welch's t interval over the seeds."""
    _check_families(per_seed)
    few = {f: len(v) for f, v in per_seed.items() if len(v) < 3}
    if few:
        raise ConfigError(f"the seed path needs at least 3 seeds per family, got {few}; run "
                          f"with --seeds 3 or more, or use the one-seed bootstrap")
    higher = _direction(metric, higher_is_better)
    values = {f: torch.tensor(list(v), dtype=torch.float64) for f, v in per_seed.items()}
    spreads = {}
    for family, v in values.items():
        sample_sd = None
        if sample_replicates is not None and family in sample_replicates:
            variances = [torch.as_tensor(r, dtype=torch.float64).var().item()
                         for r in sample_replicates[family]]
            sample_sd = math.sqrt(sum(variances) / len(variances))
        spreads[family] = Spread(len(v), v.mean().item(), v.std().item(), sample_sd)
    estimates = {f: s.mean for f, s in spreads.items()}
    differences = {}
    for a, b in _ordered_pairs(estimates, higher):
        va, vb = spreads[a].seed_sd ** 2 / len(values[a]), spreads[b].seed_sd ** 2 / len(values[b])
        estimate = estimates[a] - estimates[b]
        se = math.sqrt(va + vb)
        if se == 0:
            half = 0.0
        else:   # Welch-Satterthwaite degrees of freedom
            df = (va + vb) ** 2 / (va ** 2 / (len(values[a]) - 1) + vb ** 2 / (len(values[b]) - 1))
            half = _t_quantile((1 + level) / 2, df) * se
        differences[(a, b)] = Difference(a, b, estimate, estimate - half, estimate + half)
    seeds = sorted({len(v) for v in values.values()})
    method = (f"{level:.0%} intervals of pairwise differences: Welch t over "
              f"{'/'.join(map(str, seeds))} seeds (seed-to-seed spread; sample-to-sample spread "
              f"shown apart).")
    return Ranking(metric, higher, estimates, differences,
                   rank_with_ties(estimates, differences, higher), method, spreads)

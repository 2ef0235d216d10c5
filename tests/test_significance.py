"""report/significance.py: two families from one distribution are tied, a close-to-real set and
noise are not; the paired bootstrap's 95% interval holds the true FID difference in a Gaussian
case most of the time; the seed path (3 seeds) separates seed-to-seed from sample-to-sample
spread; the rank rule chains ties; bad input is one line. Small features keep it to seconds."""
import math

import pytest
import torch

from eval.fidelity import fid as fid_of
from pipeline.errors import ConfigError
from report.significance import (RANK_RULE, Difference, bootstrap_replicates, compare_families,
                                 metric_function, pairwise_bootstrap, rank_with_ties, seed_ranking)

DIM, N = 8, 300


def gaussian(seed: int, n: int = N, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=gen, dtype=torch.float64).float() * scale + shift


def test_two_families_from_one_distribution_are_tied():
    real = gaussian(0)
    got = compare_families({"a": gaussian(1, shift=0.2), "b": gaussian(2, shift=0.2)}, real,
                           "fid", resamples=100)
    d = got.difference("a", "b")
    assert not d.separated and d.low < 0 < d.high
    assert got.ranks == {"a": 1, "b": 1} and got.tied("a") and got.tied("b")
    assert got.note.endswith(RANK_RULE) and "paired bootstrap" in got.note


def test_close_to_real_and_noise_are_not_tied():
    real = gaussian(0)
    noise = torch.rand(N, DIM, generator=torch.Generator().manual_seed(9)) * 6 - 3
    got = compare_families({"untrained": noise, "trained": gaussian(1, shift=0.1)}, real, "fid",
                           resamples=100)
    assert got.ranks == {"trained": 1, "untrained": 2}
    d = got.difference("trained", "untrained")
    assert d.separated and d.high < 0 and d.low <= d.estimate <= d.high
    assert got.difference("untrained", "trained") == d.flipped()
    assert not got.tied("trained")


def test_kid_and_a_higher_is_better_metric():
    real = gaussian(0)
    fake = {"close": gaussian(1, shift=0.1), "far": gaussian(2, shift=1.5)}
    kid = compare_families(fake, real, metric_function("kid", kid_subset_size=100), resamples=20)
    assert kid.metric == "kid" and kid.ranks == {"close": 1, "far": 2}

    def mean_of_first(fake, real):          # higher = better, to check the direction
        return float(fake[:, 0].mean())

    up = compare_families(fake, real, mean_of_first, resamples=50, higher_is_better=True)
    assert up.ranks == {"far": 1, "close": 2}


def test_paired_real_resamples_cancel_between_identical_sets():
    """The same generated set in two families: every replicate difference is 0 only because the
    real resample (and the fake one) is shared."""
    real, fake = gaussian(0), gaussian(1, shift=0.3)
    a = bootstrap_replicates(fake, real, "fid", resamples=30, seed=4)
    b = bootstrap_replicates(fake.clone(), real, "fid", resamples=30, seed=4)
    assert torch.equal(a, b) and a.std() > 0
    got = pairwise_bootstrap({"a": 1.0, "b": 1.0}, {"a": a, "b": b}, metric="fid")
    assert (got.difference("a", "b").low, got.difference("a", "b").high) == (0.0, 0.0)


def test_interval_holds_the_true_difference_in_a_gaussian_case():
    """Real N(0, I), families N(mu_a, I) and N(mu_b, I): the true FIDs are |mu|^2, the true
    difference |mu_a|^2 - |mu_b|^2 (equal covariances, so the trace terms cancel, and so does
    most of the estimator's bias in n). A nominal 95% interval must hold it in most trials."""
    mu_a, mu_b = 0.35, 0.2                  # per coordinate
    true = DIM * (mu_a ** 2 - mu_b ** 2)
    trials, hits = 30, 0
    for t in range(trials):
        got = compare_families({"a": gaussian(100 + t, shift=mu_a), "b": gaussian(200 + t,
                                                                                 shift=mu_b)},
                               gaussian(300 + t), "fid", resamples=60, seed=t)
        d = got.difference("a", "b")
        hits += d.low <= true <= d.high
    assert hits >= 0.8 * trials, f"{hits}/{trials} intervals hold the true difference"


def test_three_seeds_separate_seed_and_sample_spread():
    real = gaussian(0)
    def runs(family_seed: int, shift: float, seed_jitter: float):
        """Three seeds' sets: seed_jitter moves each seed's distribution (a seed effect)."""
        sets = []
        for s in range(3):
            jitter = seed_jitter * torch.randn(DIM, generator=torch.Generator().manual_seed(
                family_seed * 10 + s))
            sets.append(gaussian(family_seed * 100 + s, shift=shift) + jitter)
        return ([fid_of(x, real) for x in sets],
                [bootstrap_replicates(x, real, "fid", resamples=40, seed=s)
                 for s, x in enumerate(sets)])

    same_a, same_b = runs(1, 0.2, 0.0), runs(2, 0.2, 0.0)
    far = runs(3, 1.0, 0.0)
    shaky = runs(4, 0.2, 0.6)
    per_seed = {"a": same_a[0], "b": same_b[0], "far": far[0], "shaky": shaky[0]}
    replicates = {"a": same_a[1], "b": same_b[1], "far": far[1], "shaky": shaky[1]}
    got = seed_ranking(per_seed, metric="fid", sample_replicates=replicates)
    assert not got.difference("a", "b").separated
    assert got.difference("a", "far").separated and got.difference("b", "far").separated
    assert got.ranks["a"] == got.ranks["b"] == 1 and got.ranks["far"] == 4
    assert got.estimates["a"] == pytest.approx(sum(per_seed["a"]) / 3)
    spread = got.spreads["a"]
    assert spread.seeds == 3 and spread.sample_sd > 0 and spread.seed_sd > 0
    # the seed effect shows in the seed-to-seed spread, not in the sample-to-sample one
    assert got.spreads["shaky"].seed_only_sd > 3 * got.spreads["a"].seed_only_sd
    assert got.spreads["shaky"].seed_sd > 2 * got.spreads["shaky"].sample_sd
    assert "Welch t over 3 seeds" in got.note


def test_rank_rule_chains_ties():
    est = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 9.0}

    def diff(x, y, separated):
        e = est[x] - est[y]
        return Difference(x, y, e, e - (0.5 if separated else 5), e + (0.5 if separated else 5))

    differences = {("a", "b"): diff("a", "b", False), ("b", "c"): diff("b", "c", False),
                   ("a", "c"): diff("a", "c", True), ("c", "d"): diff("c", "d", True)}
    assert rank_with_ties(est, differences, higher_is_better=False) == {"a": 1, "b": 1, "c": 1,
                                                                         "d": 4}
    assert rank_with_ties({f: -v for f, v in est.items()}, differences, True)["d"] == 4


def test_bad_input_is_one_line():
    with pytest.raises(ConfigError, match="at least 3 seeds"):
        seed_ranking({"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]}, metric="fid")
    with pytest.raises(ConfigError, match="differ in number"):
        pairwise_bootstrap({"a": 1.0, "b": 2.0}, {"a": torch.zeros(3), "b": torch.zeros(4)},
                           metric="fid")
    with pytest.raises(ConfigError, match="higher"):
        seed_ranking({"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0, 3.0]}, metric="density")
    with pytest.raises(ConfigError, match="fid or kid"):
        compare_families({"a": gaussian(1), "b": gaussian(2)}, gaussian(0), "fjd")
    assert math.isfinite(seed_ranking({"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]},
                                      metric="fid").difference("a", "b").low)

"""eval/density_coverage.py: equal to the reference implementation (prdc's compute_prdc) to 1e-6
on fixed features, in chunks or not; identical sets score 1, including the degenerate ones
that prdc scores 0 (its issue #7); disjoint sets score 0; bad input is one line."""
import contextlib
import io

import numpy as np
import pytest
import torch

from eval.density_coverage import density_coverage
from pipeline.errors import ConfigError

prdc = pytest.importorskip("prdc")   # the `test` extra (pyproject.toml)


def reference(real, fake, k):
    with contextlib.redirect_stdout(io.StringIO()):   # prdc prints the set sizes
        out = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return out["density"], out["coverage"]


def features(seed: int, n: int, dim: int, shift: float = 0.0, modes: int = 1) -> np.ndarray:
    """Gaussian clusters (a model that misses modes has fewer): float32, like extractor output."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 4, (8, dim))[:modes]
    return (centres[rng.integers(0, modes, n)] + rng.normal(shift, 1, (n, dim))).astype(np.float32)


CASES = [  # (real, fake, k): sizes equal and not, close and far sets, collapsed modes
    (features(0, 400, 16, modes=8), features(1, 300, 16, shift=0.3, modes=8), 5),
    (features(2, 250, 64, modes=8), features(3, 500, 64, modes=3), 3),
    (features(4, 300, 8), features(5, 300, 8, shift=1.5), 1),
    (features(6, 200, 32, modes=4), features(7, 200, 32, modes=4), 10),
]


@pytest.mark.parametrize("real, fake, k", CASES)
def test_equal_to_the_reference_implementation(real, fake, k):
    want = reference(real, fake, k)
    got = density_coverage(real=torch.from_numpy(real), fake=torch.from_numpy(fake), k=k)
    assert got.density == pytest.approx(want[0], abs=1e-6)
    assert got.coverage == pytest.approx(want[1], abs=1e-6)
    assert 0 < got.coverage < 1 or k == 10          # not a trivial case
    chunked = density_coverage(real=real, fake=fake, k=k, chunk=37)   # numpy in, small chunks
    assert chunked == got


def test_identical_sets_score_one():
    real = features(8, 300, 16, modes=8)
    for k in (1, 5, 20):
        got = density_coverage(real=real, fake=real.copy(), k=k)
        assert (got.density, got.coverage) == (1.0, 1.0)
        assert reference(real, real.copy(), k) == (1.0, 1.0)


def test_identical_degenerate_sets_are_not_zero():
    """prdc #7: all-equal features, or a real set whose points each have k copies, give every
    real point a zero radius, and prdc's strict `<` then scores identical sets 0 (or what the
    rounding of its distances makes of 0)."""
    ones = np.ones((64, 128), np.float32)
    assert reference(ones, ones, 5) == (0.0, 0.0)
    got = density_coverage(real=ones, fake=ones, k=5)
    assert got.coverage == 1.0 and got.density >= 1.0
    repeated = np.repeat(features(9, 40, 16), 6, axis=0)   # every point 6 times, k = 5
    density, coverage = reference(repeated, repeated, 5)   # rounding noise decides which
    assert density < 0.5 and coverage < 0.5                  # zero radii happen to be > 0
    got = density_coverage(real=repeated, fake=repeated, k=5)
    assert got.coverage == 1.0
    assert got.density == pytest.approx(6 / 5)   # each fake copies 6 real points
    # near copies are not copies: zero radii still contain nothing else
    near = density_coverage(real=repeated, fake=repeated + 1e-3, k=5)
    assert near == (0.0, 0.0)


def test_disjoint_sets_score_zero():
    got = density_coverage(real=features(10, 200, 16), fake=features(11, 200, 16, shift=50.0))
    assert got == (0.0, 0.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 200}, r"1 <= k < the number of real points \(200\), got k=200"),
    ({"k": 0}, "got k=0"),
    ({"fake": np.zeros((5, 3))}, r"differ in width \(16 vs 3\)"),
    ({"fake": np.zeros((0, 16))}, "fake features must be a non-empty"),
    ({"real": np.full((20, 16), np.nan)}, "real features hold nan"),
])
def test_bad_input_is_one_line(kwargs, message):
    args = {"real": features(12, 200, 16), "fake": features(13, 50, 16), "k": 5, **kwargs}
    with pytest.raises(ConfigError, match=message):
        density_coverage(**args)


def test_real_and_fake_cannot_be_passed_by_position():
    with pytest.raises(TypeError):
        density_coverage(features(12, 200, 16), features(13, 50, 16))

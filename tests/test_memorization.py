"""eval/memorization.py on real Fashion-MNIST: a "model" whose samples are training images is
flagged by Meehan et al.'s C_T (and the copy fraction), one whose samples are other test images
is not; the chunked nearest-neighbour search equals a brute-force float64 one; the Mann-Whitney
Z equals scipy's; the pairs grid has the right shape; bad input is one line."""
import io

import pytest
import torch
from PIL import Image

from eval.memorization import (COPY_THRESHOLD, mann_whitney_z, memorization, nearest_neighbours,
                               pairs_grid, pairs_grid_png)
from pipeline.data import load_split
from pipeline.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_TRAIN, N = 3000, 400   # a training subset keeps it to seconds; the chunked path is the same


@pytest.fixture(scope="module")
def fmnist():
    train = load_split("fashion-mnist", "train").images[:N_TRAIN]
    test = load_split("fashion-mnist", "test").images
    return train, test


def pooled(images: torch.Tensor) -> torch.Tensor:
    """Stand-in features (N, 49): 4x4 average pooling, so the feature path runs without a
    trained extractor."""
    return torch.nn.functional.avg_pool2d(images.float() / 255, 4).flatten(1)


def test_samples_that_are_training_images_are_flagged(fmnist):
    train, test = fmnist
    copies = train[torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(1))[:N]]
    floor = test[:N]
    got = memorization(samples=copies, train=train, test=floor, sample_features=pooled(copies),
                       train_features=pooled(train), test_features=pooled(floor))
    for space in (got.pixels, got.features):
        assert space.c_t < COPY_THRESHOLD and space.cells_used >= 2, space.space
        assert space.copy_fraction == 1.0
        assert torch.all(space.sample_distance == 0)
        assert torch.all(space.test_distance > 0)
    assert got.copying
    # each copy's nearest training image is itself (up to duplicates in Fashion-MNIST)
    assert torch.equal(train[got.pixels.sample_neighbour], copies)
    assert got.pairs_space == "features" and got.closest_pairs.shape == (16, 2)


def test_samples_that_are_unseen_images_are_not_flagged(fmnist):
    train, test = fmnist
    others, floor = test[N:2 * N], test[:N]
    got = memorization(samples=others, train=train, test=floor, sample_features=pooled(others),
                       train_features=pooled(train), test_features=pooled(floor))
    for space in (got.pixels, got.features):
        assert abs(space.c_t) < 2.5, (space.space, space.c_t)   # same distribution: C_T ~ N(0, <1)
        assert space.copy_fraction < 0.12                     # ~ 0.05 expected
        assert space.sample_distance.min() > 0
    assert not got.copying
    scores = got.scores()
    assert set(scores) == {f"{name}_{space}" for space in ("pixels", "features") for name in
                           ("c_t", "z_u", "copy_fraction", "median_distance",
                            "median_test_distance")}
    assert scores["c_t_pixels"] == got.pixels.c_t
    # partial copying (a quarter of the samples are training images): the copy fraction and
    # the pooled Z_U see it; C_T, an average of per-cell tests of ~50 points each, is weaker
    mixed = memorization(samples=torch.cat([others[:3 * N // 4], train[:N // 4]]), train=train,
                         test=floor).pixels
    assert mixed.copy_fraction > 0.25 and mixed.z_u < COPY_THRESHOLD


@pytest.mark.parametrize("kind", ["images", "features"])
def test_chunked_distances_equal_brute_force(fmnist, kind):
    train, test = fmnist
    queries, reference = test[:70], train[:300]
    if kind == "features":
        queries, reference = pooled(queries), pooled(reference)
        flat_q, flat_r = queries.double(), reference.double()
    else:
        flat_q, flat_r = queries.flatten(1).double() / 255, reference.flatten(1).double() / 255
    want = torch.cdist(flat_q, flat_r)
    dist, index = nearest_neighbours(queries, reference, query_chunk=11, reference_chunk=37)
    assert torch.allclose(dist, want.min(1).values, rtol=0, atol=1e-10)
    assert torch.allclose(want[torch.arange(len(want)), index], dist, rtol=0, atol=1e-10)
    whole = nearest_neighbours(queries, reference)
    assert torch.allclose(whole[0], dist, rtol=0, atol=1e-12) and torch.equal(whole[1], index)


def test_mann_whitney_z_equals_scipy():
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 30, (80,), generator=gen).double()      # many ties
    y = torch.randint(3, 35, (120,), generator=gen).double()
    result = stats.mannwhitneyu(x.numpy(), y.numpy(), alternative="less", use_continuity=False,
                                method="asymptotic")
    assert mann_whitney_z(x, y) == pytest.approx(stats.norm.ppf(result.pvalue), abs=1e-9)
    assert mann_whitney_z(x, y) < -1          # x is drawn lower


def test_pairs_grid_shape_and_order(fmnist):
    train, test = fmnist
    got = memorization(samples=train[:50], train=train[:200], test=test[:50], pairs=6,
                       cells=2)
    grid = pairs_grid(train[:50], train[:200], got.closest_pairs, pairs_per_row=3, padding=2)
    # 6 pairs, 3 a row: 2 rows of 6 tiles of 28 px, 2 px of padding around each
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2 + 2 * 30, 2 + 6 * 30)
    i, j = got.closest_pairs[0].tolist()
    assert torch.equal(grid[0, 2:30, 2:30], train[i][0])           # sample, left
    assert torch.equal(grid[0, 2:30, 32:60], train[:200][j][0])    # its training image, right
    png = Image.open(io.BytesIO(pairs_grid_png(train[:50], train[:200], got.closest_pairs, 3)))
    assert png.size == (grid.shape[2], grid.shape[1])


def test_bad_input_is_one_line(fmnist):
    train, test = fmnist
    with pytest.raises(ConfigError, match="uint8"):
        memorization(samples=train[:5].float(), train=train[:10], test=test[:5])
    with pytest.raises(ConfigError, match="together"):
        memorization(samples=train[:5], train=train[:10], test=test[:5],
                     sample_features=pooled(train[:5]))
    with pytest.raises(ConfigError, match="differ in size"):
        nearest_neighbours(pooled(train[:5]), train[:10])


def test_kept_floors_give_the_same_scores(fmnist):
    """The test images' side, kept from one family's evaluation, scores the next family exactly
    as computing it afresh would (a bench keeps it per process)."""
    train, test = fmnist
    first, second = test[N:2 * N], test[2 * N:3 * N]      # two "models"' samples
    floors: dict = {}
    kw = dict(train=train, test=test[:N], train_features=pooled(train),
              test_features=pooled(test[:N]))
    memorization(samples=first, sample_features=pooled(first), floors=floors, **kw)
    assert set(floors) == {"pixels", "features"}
    kept = memorization(samples=second, sample_features=pooled(second), floors=floors, **kw)
    fresh = memorization(samples=second, sample_features=pooled(second), **kw)
    assert kept.scores() == fresh.scores()
    assert torch.equal(kept.closest_pairs, fresh.closest_pairs)

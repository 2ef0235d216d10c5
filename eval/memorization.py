"""Memorization: how close generated images lie to the training set, against held-out images.

For each generated image, the distance to its nearest training image, in pixels (L2 on [0, 1]
floats) and optionally in features (the domain extractor's FID features); the same for held-out
test images, which were never trained on: their distances are the floor a model that does not
copy should not go below.

Copy score: the C_T statistic of Meehan, Chaudhuri & Dasgupta 2020, "A Non-Parametric Test to
Detect Data-Copying in Generative Models" (AISTATS). The training set is cut into cells by
k-means; in each cell with enough generated samples, a Mann-Whitney U test compares the generated
samples' nearest-training distances with the test images', Z-scored (Z_U); C_T is the mean of
the cells' Z_U weighted by the test images' share of each cell. C_T ~ 0 when samples are as far
from the training set as unseen data, C_T << 0 (below COPY_THRESHOLD) flags copying, C_T >> 0
underfitting. One difference from the paper's code: a point's distance is to its nearest
training image overall, not only within its cell (the same in almost every case: the nearest
image of a k-means cell's member is nearly always in that cell).

Alongside, a simpler number: the fraction of samples closer to a training image than the 5th
percentile of the test images' distances (about 0.05 for a model that does not copy).

Distances are computed in chunks of queries x training rows (float32 products to shortlist
CANDIDATES neighbours, then their exact float64 distances), so 60,000 training images never make
one N x 60000 float64 matrix; it runs on the tensors' own device.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from pipeline.errors import ConfigError

QUERY_CHUNK = 256         # query rows per product
REFERENCE_CHUNK = 8192    # training rows per product: QUERY_CHUNK x REFERENCE_CHUNK float32
CANDIDATES = 8            # float32 shortlist per chunk, re-ranked in float64
CELLS = 10                # k-means cells of the training set (Meehan et al. use 3 to 50)
MIN_SAMPLES_PER_CELL = 20  # the paper's tau = 20 / m: cells with fewer samples are left out
KMEANS_FIT_ROWS = 5000    # training rows the cells are fitted on (a seeded subset)
KMEANS_ITERATIONS = 20
COPY_THRESHOLD = -3.0     # C_T below this flags data copying (about p < 0.001 one-sided)
FLOOR_PERCENTILE = 0.05   # copy fraction: samples closer than this quantile of the test distances
SEED = 0


def _rows(x: torch.Tensor, start: int, stop: int,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows start:stop as flat floats; uint8 images scaled to [0, 1]."""
    part = x[start:stop].reshape(min(stop, len(x)) - start, -1)
    return part.to(dtype).div_(255.0) if part.dtype == torch.uint8 else part.to(dtype)


def _check(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim < 2 or len(x) == 0:
        raise ConfigError(f"{name} must be a non-empty (N, C, H, W) image or (N, F) feature "
                          f"tensor, got shape {tuple(x.shape)}")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ConfigError(f"{name} hold nan or inf; check where they were computed")
    return x


def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor, *,
                       query_chunk: int = QUERY_CHUNK, reference_chunk: int = REFERENCE_CHUNK
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, the L2 distance to its nearest reference row (float64, (N,)) and that
    row's index ((N,) int64). uint8 images are compared as [0, 1] floats, other tensors as they
    are; both are flattened per row and must have the same width."""
    queries, reference = _check(queries, "queries"), _check(reference, "reference")
    if queries[0].numel() != reference[0].numel():
        raise ConfigError(f"queries and reference rows differ in size ({tuple(queries.shape[1:])}"
                          f" vs {tuple(reference.shape[1:])}); compare images with images of "
                          f"the same shape, or features of the same extractor")
    device = reference.device
    queries = queries.to(device)
    best = torch.full((len(queries),), float("inf"), dtype=torch.float64, device=device)
    best_index = torch.zeros(len(queries), dtype=torch.long, device=device)
    for r0 in range(0, len(reference), reference_chunk):
        ref = _rows(reference, r0, r0 + reference_chunk)    # converted once per chunk
        ref_sq = (ref * ref).sum(1)
        ref64 = _rows(reference, r0, r0 + reference_chunk, torch.float64)
        keep = min(CANDIDATES, len(ref))
        for q0 in range(0, len(queries), query_chunk):
            q = _rows(queries, q0, q0 + query_chunk)
            d2 = (q * q).sum(1)[:, None] + ref_sq[None, :] - 2.0 * (q @ ref.T)
            shortlist = d2.topk(keep, dim=1, largest=False).indices          # (Q, keep)
            # exact float64 distances of the shortlist: float32's |a|^2 + |b|^2 - 2ab loses
            # the small distances of near-copies to cancellation
            q64 = _rows(queries, q0, q0 + query_chunk, torch.float64)
            exact = (q64[:, None, :] - ref64[shortlist]).pow_(2).sum(2)
            d, pick = exact.min(1)
            rows = slice(q0, q0 + len(q))
            better = d < best[rows]
            best[rows] = torch.where(better, d, best[rows])
            best_index[rows] = torch.where(better, shortlist.gather(1, pick[:, None])[:, 0] + r0,
                                           best_index[rows])
    return best.sqrt(), best_index


def mann_whitney_z(x: torch.Tensor, y: torch.Tensor) -> float:
    """Z-scored Mann-Whitney U of x against y (U counts pairs with x > y, ties a half), with the
    tie correction of the variance and no continuity correction: < 0 when x tends to be smaller."""
    m, n = len(x), len(y)
    values = torch.cat([x, y]).double().cpu()
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    uniq, inverse, counts = values.unique(return_inverse=True, return_counts=True)
    # average rank of each group of equal values
    rank_sum = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    ranks = (rank_sum / counts)[inverse]
    u = ranks[:m].sum().item() - m * (m + 1) / 2
    total = m + n
    ties = ((counts.double() ** 3 - counts).sum() / (total * (total - 1))).item()
    variance = m * n / 12 * ((total + 1) - ties)
    return (u - m * n / 2) / variance ** 0.5 if variance > 0 else 0.0


def kmeans_centres(points: torch.Tensor, cells: int, seed: int = SEED,
                   fit_rows: int = KMEANS_FIT_ROWS,
                   iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Lloyd's k-means on a seeded subset of the training rows: (cells, D) float32 centres."""
    gen = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(points), generator=gen)[:fit_rows].to(points.device)
    data = _rows(points[subset], 0, len(subset))
    centres = data[torch.randperm(len(data), generator=gen)[:cells].to(data.device)].clone()
    data_sq = (data * data).sum(1, keepdim=True)
    for _ in range(iterations):
        # float32 assignment is enough here: a near-tie only moves a point between two cells
        label = (data_sq - 2.0 * data @ centres.T + (centres * centres).sum(1)).argmin(1)
        for c in range(len(centres)):
            members = data[label == c]
            if len(members):                      # an empty cell keeps its centre
                centres[c] = members.mean(0)
    return centres


@dataclass(frozen=True)
class SpaceResult:
    """Distances and copy scores in one space ("pixels" or "features")."""
    space: str
    sample_distance: torch.Tensor    # (M,) float64: each generated image to its nearest training
    sample_neighbour: torch.Tensor   # (M,) int64: that training image's index
    test_distance: torch.Tensor      # (N_test,) float64: the floor, test image to nearest training
    z_u: float                       # Mann-Whitney Z over all points (no cells)
    c_t: float                       # Meehan et al.'s C_T over the cells used (nan if none)
    cells_used: int
    copy_fraction: float             # samples closer than the test distances' 5th percentile
    floor_threshold: float           # that percentile

    @property
    def copying(self) -> bool:
        return self.c_t < COPY_THRESHOLD


@dataclass(frozen=True)
class Memorization:
    pixels: SpaceResult
    features: SpaceResult | None
    closest_pairs: torch.Tensor      # (k, 2) int64: (sample index, training index), closest first
    pairs_space: str                 # the space closest_pairs were ranked in

    @property
    def copying(self) -> bool:
        """Flagged in pixels or in features."""
        return self.pixels.copying or (self.features is not None and self.features.copying)

    def scores(self) -> dict[str, float]:
        """Plain numbers per space, for logging: {c_t_pixels, z_u_pixels, copy_fraction_pixels,
        median_distance_pixels, median_test_distance_pixels, ..._features}."""
        out = {}
        for result in (self.pixels, self.features):
            if result is not None:
                out.update({f"c_t_{result.space}": result.c_t, f"z_u_{result.space}": result.z_u,
                            f"copy_fraction_{result.space}": result.copy_fraction,
                            f"median_distance_{result.space}":
                                result.sample_distance.median().item(),
                            f"median_test_distance_{result.space}":
                                result.test_distance.median().item()})
        return out


@dataclass(frozen=True)
class Floor:
    """What a space's scores need of the training and test sets alone: the same for every
    model evaluated against them, so a caller may keep it (eval/metrics/memorization.py does,
    per process: a bench evaluates several families against one training split)."""
    test_distance: torch.Tensor      # (N_test,) float64: each test image to its nearest training
    centres: torch.Tensor            # (cells, D) the k-means cells of the training set
    test_cell: torch.Tensor          # (N_test,) int64: each test image's cell


def floor_of(train, test, *, cells: int = CELLS, seed: int = SEED,
             query_chunk: int = QUERY_CHUNK, reference_chunk: int = REFERENCE_CHUNK) -> Floor:
    train, test = _check(train, "training rows"), _check(test, "test rows")
    chunks = {"query_chunk": query_chunk, "reference_chunk": reference_chunk}
    test_d, _ = nearest_neighbours(test, train, **chunks)
    centres = kmeans_centres(train, min(cells, len(train)), seed)
    _, test_cell = nearest_neighbours(test, centres, **chunks)
    return Floor(test_d, centres, test_cell)


def copy_scores(space: str, samples, train, test, *, cells: int = CELLS,
                min_per_cell: int = MIN_SAMPLES_PER_CELL, seed: int = SEED,
                query_chunk: int = QUERY_CHUNK, reference_chunk: int = REFERENCE_CHUNK,
                floor: Floor | None = None) -> SpaceResult:
    """Distances and C_T in one space: samples, train, test are rows of that space (uint8
    images or float features). floor: floor_of(train, test) computed before, if kept."""
    samples, train, test = (_check(x, name) for x, name in
                            ((samples, f"generated {space}"), (train, f"training {space}"),
                             (test, f"test {space}")))
    chunks = {"query_chunk": query_chunk, "reference_chunk": reference_chunk}
    sample_d, sample_nn = nearest_neighbours(samples, train, **chunks)
    floor = floor or floor_of(train, test, cells=cells, seed=seed, **chunks)
    test_d, centres, test_cell = floor.test_distance, floor.centres, floor.test_cell
    _, sample_cell = nearest_neighbours(samples, centres, **chunks)
    weighted, weights, used = 0.0, 0.0, 0
    for c in range(len(centres)):
        s, t = sample_d[sample_cell == c], test_d[test_cell == c]
        if len(s) >= min_per_cell and len(t) > 0:
            share = len(t) / len(test_d)
            weighted += share * mann_whitney_z(s, t)
            weights += share
            used += 1
    threshold = torch.quantile(test_d, FLOOR_PERCENTILE).item()
    return SpaceResult(
        space=space, sample_distance=sample_d.cpu(), sample_neighbour=sample_nn.cpu(),
        test_distance=test_d.cpu(), z_u=mann_whitney_z(sample_d, test_d),
        c_t=weighted / weights if used else float("nan"), cells_used=used,
        copy_fraction=(sample_d < threshold).double().mean().item(), floor_threshold=threshold)


def memorization(*, samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor,
                 sample_features: torch.Tensor | None = None,
                 train_features: torch.Tensor | None = None,
                 test_features: torch.Tensor | None = None, pairs: int = 16,
                 cells: int = CELLS, seed: int = SEED, floors: dict | None = None,
                 **chunks) -> Memorization:
    """Memorization of a generator: samples, train, test are uint8 (N, C, H, W) images of one
    shape; the three *_features (N, F) of one extractor, all or none. The closest pairs are
    ranked in features when given (what a viewer calls the same image), else in pixels.
    Keyword-only, so that the training and test sets cannot be swapped by position.
    floors: {"pixels": Floor, "features": Floor} kept from an earlier call with the same
    training and test sets; the ones missing are computed and added to it."""
    given = [f is not None for f in (sample_features, train_features, test_features)]
    if any(given) and not all(given):
        raise ConfigError("pass sample_features, train_features and test_features together, "
                          "or none of them")
    for x, name in ((samples, "generated images"), (train, "training images"),
                    (test, "test images")):
        if torch.as_tensor(x).dtype != torch.uint8 or torch.as_tensor(x).ndim != 4:
            raise ConfigError(f"{name} must be uint8 (N, C, H, W); got "
                              f"{torch.as_tensor(x).dtype} {tuple(torch.as_tensor(x).shape)}")
    floors = {} if floors is None else floors
    for space, rows in (("pixels", (train, test)),
                        ("features", (train_features, test_features) if all(given) else None)):
        if rows is not None and space not in floors:
            floors[space] = floor_of(*rows, cells=cells, seed=seed, **chunks)
    pixels = copy_scores("pixels", samples, train, test, cells=cells, seed=seed,
                         floor=floors["pixels"], **chunks)
    features = None
    if all(given):
        features = copy_scores("features", sample_features, train_features, test_features,
                               cells=cells, seed=seed, floor=floors["features"], **chunks)
    ranked = features or pixels
    order = ranked.sample_distance.argsort()[:pairs]
    closest = torch.stack([order, ranked.sample_neighbour[order]], 1)
    return Memorization(pixels=pixels, features=features, closest_pairs=closest,
                        pairs_space=ranked.space)


def pairs_grid(samples: torch.Tensor, train: torch.Tensor, pairs: torch.Tensor,
               pairs_per_row: int = 4, padding: int = 2) -> torch.Tensor:
    """The (sample, nearest training image) pairs side by side, `pairs_per_row` pairs a row:
    uint8 (3, H, W) for torchvision.utils.make_grid's layout (sample left, training right)."""
    from torchvision.utils import make_grid

    if len(pairs) == 0:
        raise ConfigError("no pairs to draw; pass at least one (sample, training) index pair")
    tiles = torch.stack([torch.stack([samples[i], train[j]]) for i, j in pairs.tolist()])
    tiles = tiles.flatten(0, 1)                    # s0, t0, s1, t1, ...
    if tiles.shape[1] == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    return make_grid(tiles, nrow=2 * pairs_per_row, padding=padding, pad_value=255)


def pairs_grid_png(samples: torch.Tensor, train: torch.Tensor, pairs: torch.Tensor,
                   pairs_per_row: int = 4) -> bytes:
    """pairs_grid as PNG bytes (for the report or an MLflow artifact)."""
    from PIL import Image

    grid = pairs_grid(samples, train, pairs, pairs_per_row)
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()

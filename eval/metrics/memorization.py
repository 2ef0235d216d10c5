"""--metrics memorization: does the generator copy its training set? (eval/memorization.py)

Samples: the fidelity pass's generated images when it ran in this evaluation (ctx.fake), else
n freshly generated ones. Train: the run's whole training split. Test (the floor: images never
trained on): the fidelity protocol's reference subset of the test split, whose features are
cached already. Spaces: pixels, and the FID features of the domain extractor (training-split
features cached per extractor and split, so every family after the first reuses them).

Logs Meehan et al. 2020's C_T in pixels and in features (strongly negative = copying; ~0 = as
far from the training set as unseen images) and the copy fraction, with the protocol in the
stamps, and the closest (sample, training image) pairs as a PNG of the evaluation.

Cost: each sample and test image is compared with every training image (54,000 in
Fashion-MNIST's train split), so at most MAX_IMAGES of each are used (stamped); on 2 busy
cores 1,000 x 54,000 in pixels took ~18 s (see the report of the change).
"""
from __future__ import annotations

import math

import torch

from eval.domain_classifier import dataset_key
from eval.extractors import get_extractor
from eval.fidelity import extract_features
from eval.memorization import (CELLS, COPY_THRESHOLD, MIN_SAMPLES_PER_CELL, memorization,
                               pairs_grid_png)
from eval.metrics.context import EvalContext, subset
from eval.metrics.fidelity import reference_features
from eval.samples import generate
from pipeline.data import ImageData
from pipeline.errors import ConfigError

NAME = "memorization"
METHOD = "Meehan et al. 2020 C_T"
MAX_IMAGES = 1000     # samples and test images each; the training split is used whole
DEFAULT_N = 1000      # samples generated when no fidelity pass left any
PAIRS = 16
FIGURE = "memorization_pairs.png"   # eval/run.py tags it as eval.memorization.figure
KEYS = ("c_t_pixels", "c_t_features", "copy_fraction")
# The test images' side of the scores (their nearest training distances, the k-means cells), by
# training and test set and extractor: computed by the first family a process evaluates, reused
# by the others (half of the work of every later one).
_FLOORS: dict[tuple, dict] = {}


def compute(ctx: EvalContext, names: list[str]) -> None:
    opts, model = ctx.opts, ctx.model
    d = model.cfg.data
    samples = ctx.fake
    if samples is None:
        n = min(opts.n_fake or DEFAULT_N, MAX_IMAGES)
        freqs = ctx.train.class_frequencies() if model.cfg.train.conditional else None
        samples, _ = generate(model.cfg, model.nets, n, ctx.test.image_shape, freqs, opts.seed,
                              opts.batch_size, ctx.device, opts.quiet)
        ctx.fake = samples
    samples = samples[:MAX_IMAGES]
    train = ctx.train
    if len(samples) < 2 or len(train) < CELLS:
        raise ConfigError(f"memorization needs at least 2 samples and {CELLS} training images, "
                          f"got {len(samples)} and {len(train)}; raise --n-fake")
    # the fidelity protocol's reference subset of the test split (its features are cached)
    n_real = opts.n_real or min(10_000, len(ctx.test))
    reference = subset(ctx.test, min(n_real, len(ctx.test)), opts.seed)
    test = reference.images[:MAX_IMAGES]
    name = "domain" if "domain" in opts.extractors else opts.extractors[0]
    ext = get_extractor(name, d.dataset, d.root, d.image_size, ctx.device,
                        opts.inception_weights, opts.quiet, opts.domain_epochs)
    layer = ext.layers["fid"]

    def cached(data: ImageData, key: str) -> torch.Tensor:
        return reference_features(ext, data, key, opts.batch_size, opts.quiet)[layer]

    excluded = tuple(getattr(d, "exclude_classes", ()) or ())
    base = dataset_key(d.dataset, d.image_size) + (
        f"-without{'_'.join(map(str, excluded))}" if excluded else "")
    train_key = f"{base}-train-val{d.val_fraction}-split{d.split_seed}-all"
    ref_key = f"{base}-test-n{n_real}-seed{opts.seed}"    # = eval.metrics.fidelity.real_sets'
    got = memorization(samples=samples, train=train.images, test=test,
                       sample_features=extract_features(ext, samples, opts.batch_size,
                                                        "features of samples", opts.quiet)[layer],
                       train_features=cached(train, train_key),
                       test_features=cached(reference, ref_key)[:len(test)], pairs=PAIRS,
                       floors=_FLOORS.setdefault((train_key, ref_key, len(test), ext.name,
                                                  ext.sha256, layer, str(ctx.device)), {}))
    scores = got.scores()
    values = dict(zip(KEYS, (scores["c_t_pixels"], scores["c_t_features"],
                             scores["copy_fraction_features"])))
    for key, value in values.items():
        if math.isfinite(value):
            ctx.metrics[key] = value
        else:   # too few samples for any k-means cell (MIN_SAMPLES_PER_CELL each)
            ctx.notes.append(f"memorization: no {key} ({len(samples)} samples leave no cell "
                             f"with {MIN_SAMPLES_PER_CELL}); raise --n-fake")
    for field, value in (
            ("images", len(samples)), ("test_images", len(test)),
            ("train_images", len(train)),
            ("reference", f"nearest of all {len(train)} training images; floor: {len(test)} "
                          f"test images (seed {opts.seed})"),
            ("method", f"{METHOD} (Mann-Whitney Z per k-means cell of the training set, "
                       f"weighted by the test images' share)"),
            ("features", f"{ext.name} extractor, {layer} layer (the FID features)"),
            ("threshold", f"C_T < {COPY_THRESHOLD:g} flags copying"),
            ("cells", f"{CELLS} ({got.features.cells_used} in features, "
                      f"{got.pixels.cells_used} in pixels with enough samples)"),
            ("copy_fraction", "samples closer to a training image than 95% of test images "
                              "are, in features (about 0.05 when nothing is copied)")):
        ctx.stamp(NAME, field, value)
    if got.copying:
        ctx.notes.append(f"memorization: C_T {scores['c_t_pixels']:.2f} (pixels), "
                         f"{scores['c_t_features']:.2f} (features): below {COPY_THRESHOLD:g}, "
                         f"the samples look copied from the training set")
    ctx.figures[FIGURE] = pairs_grid_png(samples, train.images, got.closest_pairs)

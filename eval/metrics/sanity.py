"""--metrics sanity: the metric sanity panel, on the extractor(s) and n of the fidelity numbers.

Three sets whose right answers are known, each scored against the fidelity protocol's
reference (n_real test images) exactly as a model's samples are (FID, precision/recall,
density/coverage):
    train      n_fake real train images (the floor set): FID at the floor, P/R/D/C near 1
    collapsed  n_fake train images of one class (a mode-collapsed "model"): recall and coverage
               low, precision high. Train, not test, images: the test split has too few of one
               class outside the reference for n_fake, and they must not be reference images
    noise      n_fake images of uniform noise: FID far above any model, precision near 0
Logged as sanity_<set>_<metric>_<extractor> (sanity_noise_fid_domain); the report judges them
(report/sanity.py) and says at its top which expectation failed. The features of all three
are cached like the reference's, so the panel costs a few k-NN passes per evaluation.
"""
from __future__ import annotations

import torch

from eval.extractors import get_extractor
from eval.fidelity import fidelity_metrics
from eval.metrics.context import EvalContext
from eval.metrics.fidelity import DEFAULT_N, FidelityPlan, real_sets, reference_features
from pipeline import schema
from pipeline.data import ImageData
from pipeline.errors import ConfigError

NAME = "sanity"
PREFIX = schema.SANITY_PREFIX
SETS = ("train", "collapsed", "noise")
METRICS = ("fid", "prc", "dc")
COLLAPSED_CLASS = 0
NOISE_SEED = 1234


def key(case: str, metric: str, extractor: str) -> str:
    """key("noise", "fid", "domain") -> "sanity_noise_fid_domain"."""
    return f"{PREFIX}{case}_{metric}_{extractor}"


def compute(ctx: EvalContext, names: list[str]) -> None:
    opts, model = ctx.opts, ctx.model
    d, test, train = model.cfg.data, ctx.test, ctx.train
    # the n of the fidelity numbers this panel vouches for
    n_fake = len(ctx.fake) if ctx.fake is not None else (opts.n_fake or min(DEFAULT_N, len(test)))
    n_real = opts.n_real or min(DEFAULT_N, len(test))
    plan = FidelityPlan(n_fake, min(n_real, len(test)), min(n_fake, len(train)), None)
    (reference, ref_key), (floor_set, floor_key) = real_sets(opts, d, test, train, plan)
    one_class = torch.nonzero(train.labels == COLLAPSED_CLASS).flatten()
    if len(one_class) < 10:
        raise ConfigError(f"the sanity panel needs >= 10 train images of class {COLLAPSED_CLASS},"
                          f" the run's train split has {len(one_class)}; drop --metrics sanity")
    picked = one_class[torch.randperm(len(one_class), generator=torch.Generator()
                                      .manual_seed(opts.seed))[:n_fake]].sort().values
    collapsed = ImageData(train.images[picked], train.labels[picked], train.num_classes)
    noise = ImageData(torch.randint(0, 256, (n_fake, *test.image_shape), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(NOISE_SEED)),
                      torch.zeros(n_fake, dtype=torch.long), 1)
    base = floor_key.split("-train-")[0]   # dataset (and classes left out)
    keys = {"train": (floor_set, floor_key),
            "collapsed": (collapsed, f"{floor_key}-class{COLLAPSED_CLASS}-n{len(collapsed)}"),
            "noise": (noise, f"noise-{'x'.join(map(str, test.image_shape))}-n{n_fake}"
                             f"-seed{NOISE_SEED}")}
    for name in opts.extractors:
        ext = get_extractor(name, d.dataset, d.root, d.image_size, ctx.device,
                            opts.inception_weights, opts.quiet, opts.domain_epochs)
        f_real = reference_features(ext, reference, ref_key, opts.batch_size, opts.quiet)
        for case, (data, cache_key) in keys.items():
            feats = reference_features(ext, data, cache_key, opts.batch_size, opts.quiet)
            got = fidelity_metrics(feats, f_real, ext, METRICS, prefix=f"{PREFIX}{case}_")
            ctx.metrics.update(got)
        ctx.stamp(NAME, f"{name}.weights_sha256", ext.sha256)
    for field, value in (
            ("n_fake", n_fake), ("n_real", plan.n_real), ("dataset", base),
            ("train", f"{plan.n_floor} train images (the floor set) vs the reference"),
            ("collapsed", f"{len(collapsed)} train images of class {COLLAPSED_CLASS} only"),
            ("noise", f"{n_fake} images of uniform uint8 noise (seed {NOISE_SEED})"),
            ("reference", f"{plan.n_real} test images (seed {opts.seed}), as for FID")):
        ctx.stamp(NAME, field, value)

"""--metrics fid,is,kid,prc,dc: sample quality. One sampling pass and one feature pass per extractor
serve every selected metric; each is scored against a reference set (n_real test images) and,
as a floor, real train images against the same reference."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from eval.domain_classifier import atomic_write, cache_dir, cache_lock, dataset_key
from eval.extractors import Extractor, get_extractor
from eval.fidelity import (BOOTSTRAP_LEVEL, DC_NEIGHBORHOOD, FIDELITY_METRICS, IS_SPLITS,
                           KID_SUBSET_SIZE, KID_SUBSETS, PRC_NEIGHBORHOOD, RNG_SEED,
                           bootstrap_intervals, check_kid_samples, extract_features,
                           fidelity_metrics, percentile_interval)
from eval.metrics.context import EvalContext, subset
from eval.samples import generate
from pipeline import schema
from pipeline.data import ImageData
from pipeline.errors import ConfigError

REPLICATES_RECORD = "bootstrap_replicates"   # eval.json's key (report/significance_section.py)
REPLICATED = ("fid", "kid")   # the metrics whose replicates --bootstrap saves
DEFAULT_N = 10_000     # n_fake and n_real: 10,000 or the size of the reference split
MIN_SAMPLES = IS_SPLITS   # IS splits the samples in 10; PR needs 4 neighbours


def compute(ctx: EvalContext, names: list[str]) -> None:
    opts, model = ctx.opts, ctx.model
    d, test = model.cfg.data, model.test
    fidelity = [m for m in FIDELITY_METRICS if m in names]
    # bad set sizes are one line before an extractor is loaded (or trained)
    plan = plan_fidelity(opts, opts.n_fake or min(DEFAULT_N, len(test)), test, ctx.train,
                         fidelity, ctx.notes)
    extractors = [get_extractor(name, d.dataset, d.root, d.image_size, ctx.device,
                                opts.inception_weights, opts.quiet, opts.domain_epochs)
                  for name in opts.extractors]
    cfg, train = model.cfg, ctx.train
    freqs = train.class_frequencies() if cfg.train.conditional else None
    fake, labels = generate(cfg, model.nets, plan.n_fake, test.image_shape, freqs, opts.seed,
                            opts.batch_size, ctx.device, opts.quiet)
    if labels is not None:  # the class mix the samples were drawn with, class 0 first
        counts = torch.bincount(labels, minlength=train.num_classes).tolist()
        ctx.stamp("sample_label_counts", value=",".join(map(str, counts)))
    how = "drawn from train class frequencies" if cfg.train.conditional else "unconditional"
    replicates: list[dict] = []
    score_fidelity(opts, d, test, train, fake, extractors, fidelity, plan, how, ctx.metrics,
                   ctx.tags, ctx.notes, replicates)
    if replicates:  # eval.json of this record: the report pairs them across families
        ctx.record[REPLICATES_RECORD] = replicates
    ctx.fake = fake


def reference_features(ext: Extractor, data: ImageData, key: str, batch_size: int,
                       quiet: bool) -> dict[str, torch.Tensor]:
    """Features of a real image set, cached per (extractor weights, dataset split, subset):
    Inception on CPU costs minutes per 10,000 images, and the reference never changes."""
    path = cache_dir() / "features" / f"{ext.name}-{ext.sha256[:16]}-{key}.pt"

    def cached():
        if path.is_file():
            try:
                feats = torch.load(path, map_location="cpu", weights_only=True)
                if all(len(v) == len(data) for v in feats.values()):
                    return feats
            except Exception:  # a damaged cache file: recompute
                pass
        return None

    feats = cached()
    if feats is not None:
        return feats
    with cache_lock(path):  # evals that miss at once: one extracts, the others wait and reuse
        feats = cached()
        if feats is None:
            feats = extract_features(ext, data.images, batch_size, f"features of {key}", quiet)
            atomic_write(path, lambda tmp: torch.save(feats, tmp))
    return feats


@dataclass(frozen=True)
class FidelityPlan:
    """How many images each set holds: checked before any slow sampling."""
    n_fake: int
    n_real: int
    n_floor: int
    kid_size: int | None


def plan_fidelity(opts, n_fake: int, test: ImageData, train: ImageData, fidelity: list[str],
                  notes: list[str]) -> FidelityPlan:
    n_real = opts.n_real or min(DEFAULT_N, len(test))
    if n_real > len(test):
        raise ConfigError(f"--n-real {n_real} exceeds the {len(test)} images of the test split; "
                          f"lower it")
    if min(n_fake, n_real) < MIN_SAMPLES:
        raise ConfigError(f"FID/IS/KID/PR need at least {MIN_SAMPLES} images per set (IS uses "
                          f"{IS_SPLITS} splits), got n_fake={n_fake}, n_real={n_real}; raise "
                          f"--n-fake/--n-real")
    n_floor = min(n_fake, len(train))
    if n_floor < n_fake:
        notes.append(f"the floor uses all {n_floor} train images (fewer than n_fake={n_fake})")
    kid_size = opts.kid_subset_size
    if "kid" in fidelity:
        if kid_size is None:
            kid_size = min(KID_SUBSET_SIZE, n_fake, n_real, n_floor)
            if kid_size < KID_SUBSET_SIZE:
                notes.append(f"KID subset size lowered from {KID_SUBSET_SIZE} to {kid_size}: "
                             f"only {min(n_fake, n_real, n_floor)} samples per set")
        check_kid_samples(min(n_fake, n_floor), n_real, kid_size)
    return FidelityPlan(n_fake, n_real, n_floor, kid_size)


def real_sets(opts, d, test: ImageData, train: ImageData, plan: FidelityPlan):
    """The reference (n_real test images) and floor (n_floor train images) sets with their
    feature-cache keys: the same for a model's samples and for a folder of anyone's samples."""
    excluded = tuple(getattr(d, "exclude_classes", ()) or ())
    # the cache key names everything that picks the images (classes left out included)
    key = dataset_key(d.dataset, d.image_size) + (
        f"-without{'_'.join(map(str, excluded))}" if excluded else "")
    reference = subset(test, plan.n_real, opts.seed)
    floor_set = subset(train, plan.n_floor, opts.seed + 1)
    ref_key = f"{key}-test-n{plan.n_real}-seed{opts.seed}"
    floor_key = (f"{key}-train-val{d.val_fraction}-split{d.split_seed}"
                 f"-n{plan.n_floor}-seed{opts.seed + 1}")
    return (reference, ref_key), (floor_set, floor_key)


# The floor (real train vs real test images) by protocol: the same numbers for every model
# evaluated against one reference set, so a process that evaluates several (a bench) computes
# them once. Its KID alone is 300 kernel products of 1,000 x 1,000 features.
_FLOORS: dict[tuple, dict] = {}


def score_fidelity(opts, d, test: ImageData, train: ImageData, fake: torch.Tensor,
                   extractors: list[Extractor], fidelity: list[str], plan: FidelityPlan,
                   labels: str, metrics, tags, notes,
                   replicates: list[dict] | None = None) -> None:
    """Metrics of `fake` against the reference set, the floor, and their protocol stamps. With
    --bootstrap and a `replicates` list, each FID/KID's paired bootstrap replicates are appended
    to it (bootstrap_replicates_of)."""
    (reference, ref_key), (floor_set, floor_key) = real_sets(opts, d, test, train, plan)
    channels = test.image_shape[0]
    kid_size = plan.kid_size
    for ext in extractors:
        f_fake = extract_features(ext, fake, opts.batch_size, "features of samples", opts.quiet)
        f_real = reference_features(ext, reference, ref_key, opts.batch_size, opts.quiet)
        f_floor = reference_features(ext, floor_set, floor_key, opts.batch_size, opts.quiet)
        metrics.update(fidelity_metrics(f_fake, f_real, ext, fidelity, kid_size or 0))
        floor_id = (floor_key, ref_key, ext.name, ext.sha256, tuple(fidelity), kid_size or 0)
        floor = _FLOORS.get(floor_id)
        if floor is None:
            floor = _FLOORS[floor_id] = fidelity_metrics(f_floor, f_real, ext, fidelity,
                                                         kid_size or 0, prefix="floor_")
        metrics.update({k: v for k, v in floor.items() if not k.endswith(schema.STD)})

        def stamp(name: str, ext=ext) -> str:
            return schema.extractor_tag(ext.name, name)

        boot = [m for m in fidelity if m in opts.bootstrap_metrics]
        if opts.bootstrap and boot:
            tags.update({stamp("bootstrap"): f"{BOOTSTRAP_LEVEL:.0%} interval of "
                         f"{'/'.join(boot)} from "
                         f"{opts.bootstrap} resamples of both feature sets with replacement "
                         f"(seed {opts.seed}): percentiles shifted by the bootstrap bias"})
            if replicates is None:
                metrics.update(bootstrap_intervals(f_fake, f_real, ext, boot, kid_size or 0,
                                                   opts.bootstrap, opts.seed))
            else:   # the intervals from the paired replicates: one set of resamples, not two
                found = bootstrap_replicates_of(f_fake, f_real, ext, boot, kid_size,
                                                opts.bootstrap, opts.seed, plan)
                replicates.extend(found)
                for entry in found:
                    low_key, high_key = schema.ci_keys(entry["key"])
                    metrics[low_key], metrics[high_key] = percentile_interval(
                        torch.tensor(entry["values"]), metrics[entry["key"]])
                if found:
                    tags[stamp("replicates")] = (
                        f"eval.json {REPLICATES_RECORD}: {opts.bootstrap} resamples of "
                        f"{'/'.join(r['metric'] for r in found)}, real indices seeded by seed "
                        f"{opts.seed} alone (paired across families)")
        tags.update({stamp("n_fake"): str(plan.n_fake), stamp("n_real"): str(plan.n_real),
                     stamp("reference_split"): "test",
                     stamp("floor"): f"{plan.n_floor} real train images vs the reference",
                     stamp("input"): "uint8 3x{}x{}{}".format(
                         *test.image_shape[1:], " (1 channel repeated)" if channels == 1 else ""),
                     stamp("seed"): str(opts.seed), stamp("rng_seed"): str(RNG_SEED),
                     stamp("is_splits"): str(IS_SPLITS), stamp("prc_neighborhood"):
                     str(PRC_NEIGHBORHOOD), stamp("labels"): labels})
        if "dc" in fidelity:
            tags[stamp("dc_neighborhood")] = str(DC_NEIGHBORHOOD)
        if "kid" in fidelity:
            tags.update({stamp("kid_subset_size"): str(kid_size),
                         stamp("kid_subsets"): str(KID_SUBSETS)})
        tags.update({stamp(k): v for k, v in ext.protocol().items()})


def bootstrap_replicates_of(f_fake: dict, f_real: dict, ext: Extractor, fidelity: list[str],
                            kid_size: int | None, resamples: int, seed: int,
                            plan: FidelityPlan) -> list[dict]:
    """One entry per FID/KID: the metric on `resamples` bootstrap resamples (eval/
    bootstrap.bootstrap_replicates: the real indices depend on the seed alone, so families
    evaluated with the same seed against the same reference set are paired), with the protocol
    that must match before two families' replicates are compared."""
    from eval.bootstrap import bootstrap_replicates, metric_function

    out = []
    for name in REPLICATED:
        if name not in fidelity:
            continue
        layer = ext.layers[name]
        values = bootstrap_replicates(f_fake[layer], f_real[layer],
                                      metric_function(name, kid_size), resamples, seed)
        out.append({"metric": name, "key": schema.fidelity_key(name, ext.name),
                    "extractor": ext.name, "weights": ext.sha256, "n_fake": plan.n_fake,
                    "n_real": plan.n_real, "seed": seed, "resamples": resamples,
                    "kid_subset_size": kid_size if name == "kid" else None,
                    "values": values.tolist()})
    return out

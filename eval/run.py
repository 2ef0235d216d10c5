"""`genbench eval`: evaluate a trained run and log the results into the same MLflow run.

Order of work: load the model, decide which metrics apply to its family (saying why when one
does not), resolve the feature extractors (a missing Inception file fails here, before any slow
work), sample, extract features, score, then log metrics, the protocol stamp (tags), a PNG of
the samples used and an eval.json under `eval/<timestamp>/` in the run's artifacts.

Protocol tags are MLflow tags, not params: params are immutable, and re-evaluating a run with
another protocol must record the new one. Each evaluation's protocol also stays in its own
eval/<timestamp>/eval.json, so nothing earlier is overwritten.
"""
from __future__ import annotations

import json
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

import torch

from eval.domain_classifier import atomic_write, cache_dir, cache_lock, dataset_key
from eval.extractors import EXTRACTORS, Extractor, get_extractor
from eval.fidelity import (BOOTSTRAP_LEVEL, FIDELITY_METRICS, IS_SPLITS, KID_SUBSET_SIZE,
                           KID_SUBSETS, PRC_NEIGHBORHOOD, RNG_SEED, bootstrap_intervals,
                           check_kid_samples, extract_features, fidelity_metrics)
from eval.likelihood import NLLSums, data_description, nll_sums, pixel_bits, reconstruction_metrics
from eval.load import LoadedModel, load_model
from eval.ood import DEFAULT_BACKGROUND_STEPS as OOD_BACKGROUND_STEPS
from eval.ood import DEFAULT_IMAGES as OOD_IMAGES
from eval.ood.sets import SETS as OOD_SETS
from eval.probe import encode_all, probe_accuracy
from eval.samples import generate
from pipeline import VERSION, schema, tracking
from pipeline.data import ImageData, load_config_split
from pipeline.errors import ConfigError
from pipeline.grids import grid_png
from pipeline.models import FAMILIES, can

ALL_METRICS = ("fid", "is", "kid", "prc", "bpd", "probe", "ood", "bayes")
# what runs without --metrics: ood (a background model to train) and bayes (a pass per class)
# cost more and are asked for by name
DEFAULT_METRICS = ("fid", "is", "kid", "prc", "bpd", "probe")
DEFAULT_N = 10_000     # n_fake and n_real: 10,000 or the size of the reference split
DEFAULT_K = 16         # VAE importance samples (k = 1 is the ELBO)
GRID_IMAGES = 64
MIN_SAMPLES = IS_SPLITS   # IS splits the samples in 10; PR needs 4 neighbours

# (payload, k=, images=, batch_size=, seed=, workers=) -> NLLSums; the CLI passes a Ray runner
NLLRunner = Callable[..., NLLSums]


@dataclass
class EvalOptions:
    run_id: str | None = None
    checkpoint: str | None = None
    metrics: tuple[str, ...] = DEFAULT_METRICS
    extractors: tuple[str, ...] = ("domain",)
    n_fake: int | None = None
    n_real: int | None = None
    kid_subset_size: int | None = None   # default: 1000, lowered (with a note) to fit n
    k: int = DEFAULT_K
    workers: int = 1
    seed: int = 0
    batch_size: int = 250
    bpd_images: int | None = None        # default: the whole test split
    probe_images: int | None = None      # train images the probe is fitted on; default: all
    bootstrap: int | None = None         # resamples for FID/KID confidence intervals
    # --samples DIR: a folder of anyone's samples instead of a model (eval/external.py)
    samples: str | None = None
    dataset: str = "fashion-mnist"       # ... the dataset whose test split is the reference
    root: str | None = None
    image_size: int = 32
    name: str | None = None              # ... the report row's name (default: the folder's)
    ood_sets: tuple[str, ...] = OOD_SETS
    ood_images: int = OOD_IMAGES         # per OOD set, and in-distribution test images
    ood_background_steps: int = OOD_BACKGROUND_STEPS   # 0: no likelihood-ratio score
    bayes_images: int = OOD_IMAGES       # test images the Bayes classifier labels
    inception_weights: str | None = None
    domain_epochs: float | None = None   # a cheaper domain classifier (own cache slot); None: 5
    device: str = "auto"
    experiment: str = "genbench"         # for a checkpoint whose run is not in this store
    quiet: bool = False

    def validate(self) -> None:
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown or not self.metrics:
            raise ConfigError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                              f"use a comma list of {','.join(ALL_METRICS)}")
        unknown = [e for e in self.extractors if e not in EXTRACTORS]
        if unknown or not self.extractors:
            raise ConfigError(f"unknown extractor(s) {', '.join(unknown) or '(none given)'}; "
                              f"use {' or '.join(EXTRACTORS)}")
        unknown = [s for s in self.ood_sets if s not in OOD_SETS]
        if unknown or not self.ood_sets:
            raise ConfigError(f"unknown OOD set(s) {', '.join(unknown) or '(none given)'}; "
                              f"use a comma list of {','.join(OOD_SETS)}")
        if self.ood_background_steps < 0:
            raise ConfigError(f"--ood-background-steps must be >= 0, got "
                              f"{self.ood_background_steps}")
        for name in ("n_fake", "n_real", "kid_subset_size", "k", "workers", "batch_size",
                     "bpd_images", "probe_images", "ood_images", "bayes_images",
                     "bootstrap"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.domain_epochs is not None and self.domain_epochs <= 0:
            raise ConfigError(f"domain_epochs must be positive, got {self.domain_epochs}")
        if self.kid_subset_size is not None and self.kid_subset_size < 2:
            raise ConfigError("--kid-subset-size must be at least 2")


@dataclass
class EvalResult:
    run_id: str
    model: str
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    artifact_dir: str | None = None
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for but no GPU is visible; use --device cpu")
    return torch.device(name)


def library_versions() -> dict[str, str]:
    out = {"genbench": VERSION, "python": platform.python_version()}
    for pkg in ("torch", "torch-fidelity", "numpy", "torchvision"):
        try:
            out[pkg.replace("-", "_")] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def subset(data: ImageData, n: int, seed: int) -> ImageData:
    """n images of data: all of it in order when n covers it, else a seeded random subset."""
    if n >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return ImageData(data.images[idx], data.labels[idx], data.num_classes)


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


# filled in by `genbench train` after it logs the params (pipeline/cluster.resolve_resources)
RESOLVED_AT_LAUNCH = ("train.cpus_per_worker",)


def flat_config(config: dict) -> dict[str, str]:
    """A checkpoint's config dict as `genbench train` logs it (Config.flat), values as MLflow
    keeps params: strings of at most 6000 characters."""
    flat = {"model": config.get("model")}
    for section, values in config.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
    return {k: str(v)[:6000] for k, v in flat.items() if k not in RESOLVED_AT_LAUNCH}


def config_mismatch(params: dict[str, str], config: dict) -> str | None:
    """Why a run's params are not the record of this checkpoint config; None if they are."""
    for key, value in sorted(flat_config(config).items()):
        if key not in params:
            return f"it has no param {key}"
        if params[key] != value:
            return f"{key} is {params[key]!r} there, {value!r} in the checkpoint"
    return None


def target_run(model: LoadedModel, opts: EvalOptions, notes: list[str]) -> tuple[str, bool]:
    """The MLflow run to log into, and whether this evaluation created it. A checkpoint names
    its run, but a checkpoint can come from anywhere: its results go into that run only when
    the run is in this store and its params record the checkpoint's own config."""
    if opts.run_id:
        return opts.run_id, False
    if model.run_id:
        try:
            run = tracking.get_run(model.run_id)
        except ConfigError:
            why = f"is not in {tracking.tracking_uri()}"
        else:
            differs = config_mismatch(run.data.params, model.payload.get("config") or {})
            if differs is None:
                notes.append(f"logged into the checkpoint's MLflow run {model.run_id} (its "
                             f"config matches the checkpoint's)")
                return model.run_id, False
            why = f"records another config ({differs})"
        notes.append(f"the checkpoint's MLflow run {model.run_id} {why}; logged into a new run")
    tags = {schema.KIND: schema.EVAL, schema.MODEL: model.cfg.model,
            schema.DATASET: model.cfg.data.dataset, schema.CHECKPOINT: model.source,
            schema.CHECKPOINT_RUN_ID: model.run_id or ""}
    run_id = tracking.start_run(opts.experiment, f"eval-{model.cfg.model}",
                                model.cfg.flat(), tags)
    return run_id, True


def evaluate(opts: EvalOptions, nll_runner: NLLRunner | None = None) -> EvalResult:
    """Evaluate one run or checkpoint; log into its MLflow run; return what was logged."""
    opts.validate()
    t0 = time.time()
    device = resolve_device(opts.device)
    model = load_model(opts.run_id, opts.checkpoint, device)
    cfg, nets, test = model.cfg, model.nets, model.test
    family = FAMILIES[cfg.model]
    d = cfg.data
    metrics: dict[str, float] = {}
    notes: list[str] = []
    tags: dict[str, str] = {schema.eval_tag("seed"): str(opts.seed),
                            schema.eval_tag("device"): str(device),
                            schema.eval_tag("checkpoint_step"): str(model.step),
                            schema.eval_tag("image_shape"): "x".join(map(str, test.image_shape))}
    tags.update({schema.eval_tag("versions", k): v for k, v in library_versions().items()})

    wanted = set(opts.metrics)
    fidelity = [m for m in FIDELITY_METRICS if m in wanted]
    if fidelity and not can(family, "sample"):
        reason = f"not applicable: {cfg.model} has no sampler"
        notes.append(f"FID/IS/KID/PR {reason}")
        tags[schema.eval_tag("fidelity")] = reason
        fidelity = []
    if opts.workers > 1 and "bpd" in wanted and nll_runner is None:
        raise ConfigError("--workers > 1 needs the Ray runner of the genbench CLI; "
                          "use `genbench eval` or --workers 1")

    need_train = bool(fidelity) or bool(wanted & {"probe", "ood", "bayes"})
    train = load_config_split(d, "train") if need_train else None
    if fidelity:  # bad set sizes are one line before an extractor is loaded (or trained)
        plan_fidelity(opts, opts.n_fake or min(DEFAULT_N, len(test)), test, train, fidelity, [])
    extractors = [get_extractor(name, d.dataset, d.root, d.image_size, device,
                                opts.inception_weights, opts.quiet, opts.domain_epochs)
                  for name in opts.extractors] if fidelity else []
    fake = None
    if fidelity:
        fake = _fidelity(opts, model, train, extractors, fidelity, device, metrics, tags, notes)
    if "bpd" in wanted:
        _likelihood(opts, model, device, nll_runner, metrics, tags, notes)
    if "probe" in wanted:
        _probe(opts, model, train, device, metrics, tags, notes)
    figures: dict[str, bytes] = {}      # name -> PNG, logged beside eval.json
    record_extra: dict = {}             # more for eval.json
    if wanted & {"ood", "bayes"}:
        _generative_vs_discriminative(opts, model, train, device, wanted, metrics, tags, notes,
                                      figures, record_extra)

    run_id, created = target_run(model, opts, notes)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:6]}"  # never overwrites
    artifact_dir = f"eval/{stamp}"
    tags[schema.eval_tag("artifacts")] = artifact_dir
    tags[schema.eval_tag("metrics")] = ",".join(sorted(metrics))
    for name in figures:
        tags[schema.figure_tag(name.split("_")[0])] = f"{artifact_dir}/{name}"
    logger = tracking.RunLogger(run_id, tracking.tracking_uri())
    try:
        if metrics:
            logger.metrics(metrics, model.step)
        tracking.set_tags(run_id, tags)
        if fake is not None:
            logger.figure_png(grid_png(fake[:GRID_IMAGES]), f"{artifact_dir}/samples.png")
        for name, png in figures.items():
            logger.figure_png(png, f"{artifact_dir}/{name}")
        record = {"run_id": run_id, "source": model.source, "step": model.step,
                  "metrics": metrics, "protocol": tags, "notes": notes, **record_extra}
        # figure_png logs any bytes as a file artifact
        logger.figure_png(json.dumps(record, indent=2).encode(), f"{artifact_dir}/eval.json")
    finally:
        logger.close()  # the writer is asynchronous: everything is written when evaluate returns
    if created:
        tracking.end_run(run_id)
    return EvalResult(run_id, cfg.model, model.step, metrics, tags, notes, artifact_dir,
                      time.time() - t0)


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


def score_fidelity(opts, d, test: ImageData, train: ImageData, fake: torch.Tensor,
                   extractors: list[Extractor], fidelity: list[str], plan: FidelityPlan,
                   labels: str, metrics, tags, notes) -> None:
    """Metrics of `fake` against the reference set, the floor, and their protocol stamps."""
    (reference, ref_key), (floor_set, floor_key) = real_sets(opts, d, test, train, plan)
    channels = test.image_shape[0]
    kid_size = plan.kid_size
    for ext in extractors:
        f_fake = extract_features(ext, fake, opts.batch_size, "features of samples", opts.quiet)
        f_real = reference_features(ext, reference, ref_key, opts.batch_size, opts.quiet)
        f_floor = reference_features(ext, floor_set, floor_key, opts.batch_size, opts.quiet)
        metrics.update(fidelity_metrics(f_fake, f_real, ext, fidelity, kid_size or 0))
        floor = fidelity_metrics(f_floor, f_real, ext, fidelity, kid_size or 0, prefix="floor_")
        metrics.update({k: v for k, v in floor.items() if not k.endswith(schema.STD)})

        def stamp(name: str, ext=ext) -> str:
            return schema.extractor_tag(ext.name, name)

        if opts.bootstrap:
            metrics.update(bootstrap_intervals(f_fake, f_real, ext, fidelity, kid_size or 0,
                                               opts.bootstrap, opts.seed))
            tags.update({stamp("bootstrap"): f"{BOOTSTRAP_LEVEL:.0%} interval from "
                         f"{opts.bootstrap} resamples of both feature sets with replacement "
                         f"(seed {opts.seed}): percentiles shifted by the bootstrap bias"})
        tags.update({stamp("n_fake"): str(plan.n_fake), stamp("n_real"): str(plan.n_real),
                     stamp("reference_split"): "test",
                     stamp("floor"): f"{plan.n_floor} real train images vs the reference",
                     stamp("input"): "uint8 3x{}x{}{}".format(
                         *test.image_shape[1:], " (1 channel repeated)" if channels == 1 else ""),
                     stamp("seed"): str(opts.seed), stamp("rng_seed"): str(RNG_SEED),
                     stamp("is_splits"): str(IS_SPLITS), stamp("prc_neighborhood"):
                     str(PRC_NEIGHBORHOOD), stamp("labels"): labels})
        if "kid" in fidelity:
            tags.update({stamp("kid_subset_size"): str(kid_size),
                         stamp("kid_subsets"): str(KID_SUBSETS)})
        tags.update({stamp(k): v for k, v in ext.protocol().items()})


def _fidelity(opts, model: LoadedModel, train: ImageData, extractors: list[Extractor],
              fidelity: list[str], device, metrics, tags, notes) -> torch.Tensor:
    cfg, test = model.cfg, model.test
    plan = plan_fidelity(opts, opts.n_fake or min(DEFAULT_N, len(test)), test, train, fidelity,
                         notes)  # before the slow sampling
    freqs = train.class_frequencies() if cfg.train.conditional else None
    fake, labels = generate(cfg, model.nets, plan.n_fake, test.image_shape, freqs, opts.seed,
                            opts.batch_size, device, opts.quiet)
    if labels is not None:  # the class mix the samples were drawn with, class 0 first
        counts = torch.bincount(labels, minlength=train.num_classes).tolist()
        tags[schema.eval_tag("sample_label_counts")] = ",".join(map(str, counts))
    how = "drawn from train class frequencies" if cfg.train.conditional else "unconditional"
    score_fidelity(opts, cfg.data, test, train, fake, extractors, fidelity, plan, how,
                   metrics, tags, notes)
    return fake


def _likelihood(opts, model: LoadedModel, device, nll_runner, metrics, tags, notes) -> None:
    cfg, test = model.cfg, model.test
    n = min(opts.bpd_images or len(test), len(test))
    data = test if n == len(test) else ImageData(test.images[:n], test.labels[:n],
                                                 test.num_classes)
    family = FAMILIES[cfg.model]
    if can(family, "reconstruct") and not can(family, "nll"):  # a stand-in for a likelihood
        metrics.update(reconstruction_metrics(cfg, model.nets, data, opts.batch_size, device,
                                              opts.quiet))
        tags.update({schema.eval_tag("recon", "split"): "test",
                     schema.eval_tag("recon", "images"): str(n),
                     schema.eval_tag("recon", "scale"): "mse on [-1, 1] pixels; psnr for [0, 1] "
                                                        "pixels"})
    if not can(family, "nll"):
        reason = f"not applicable: {family.LIKELIHOOD_NOTE}"
        notes.append(f"bpd {reason}")
        tags[schema.eval_tag("bpd")] = reason
        return
    if opts.workers > 1:
        sums = nll_runner(model.payload, k=opts.k, images=n, batch_size=opts.batch_size,
                          seed=opts.seed, workers=opts.workers)
    else:
        sums = nll_sums(cfg, model.nets, data, opts.k, opts.batch_size, seed=opts.seed,
                        device=device, quiet=opts.quiet)
    bits = pixel_bits(family, cfg.family)
    metrics[schema.bpd_key(bits)] = sums.bits_per_dim
    k = opts.k if family.LIKELIHOOD == "bound" else 1  # exact likelihoods ignore k
    what = family.LIKELIHOOD_NOTE + (f"; k={k}" if family.LIKELIHOOD == "bound" else "")
    tags.update({schema.eval_tag("bpd"): what, schema.eval_tag("bpd", "k"): str(k),
                 schema.eval_tag("bpd", "split"): "test",
                 schema.eval_tag("bpd", "images"): str(sums.images),
                 schema.eval_tag("bpd", "data"): data_description(bits),
                 schema.eval_tag("bpd", "workers"): str(opts.workers),
                 schema.eval_tag("bpd", "seed"): str(opts.seed),
                 schema.eval_tag("bpd", "conditional"): str(cfg.train.conditional).lower()})


def _probe(opts, model: LoadedModel, train: ImageData, device, metrics, tags, notes) -> None:
    cfg = model.cfg
    family = FAMILIES[cfg.model]
    if not can(family, "encode"):
        reason = f"not applicable: {cfg.model} has no encoder"
    elif cfg.train.conditional:
        reason = "not applicable: a conditional encoder takes the label as input"
    else:
        reason = None
    if reason:
        notes.append(f"probe {reason}")
        tags[schema.eval_tag("probe")] = reason
        return
    fit_set = subset(train, opts.probe_images or len(train), opts.seed)
    z_train = encode_all(cfg, model.nets, fit_set, device=device, quiet=opts.quiet)
    z_test = encode_all(cfg, model.nets, model.test, device=device, quiet=opts.quiet)
    metrics[schema.PROBE_ACCURACY] = probe_accuracy(z_train, fit_set.labels, z_test,
                                               model.test.labels, model.test.num_classes)
    tags.update({schema.eval_tag("probe"): "multinomial logistic regression (L-BFGS, L2 1e-4) "
                 "on the standardized encoder mean z",
                 schema.eval_tag("probe", "train_images"): str(len(fit_set)),
                 schema.eval_tag("probe", "test_images"): str(len(model.test))})


def _generative_vs_discriminative(opts, model: LoadedModel, train: ImageData, device, wanted,
                                  metrics, tags, notes, figures, record) -> None:
    """--metrics ood and/or bayes: the model's OOD scores and its Bayes classifier, next to the
    domain classifier (trained without the run's excluded classes, if any)."""
    from eval.ood.baseline import baseline_classifier
    from eval.ood.bayes import evaluate_bayes, not_applicable
    from eval.ood import evaluate_ood

    cfg, d = model.cfg, model.cfg.data
    family = FAMILIES[cfg.model]
    classifier = baseline_classifier(d.dataset, d.root, d.image_size, d.exclude_classes, device,
                                     opts.quiet, opts.domain_epochs)
    if "ood" in wanted:
        ood = evaluate_ood(model, train, classifier, sets=opts.ood_sets, images=opts.ood_images,
                           k=opts.k, background_steps=opts.ood_background_steps,
                           batch_size=opts.batch_size, seed=opts.seed, device=device,
                           quiet=opts.quiet)
        metrics.update(ood.metrics)
        tags.update(ood.tags)
        notes.extend(ood.notes)
        record["ood_score_means"] = ood.means
        if ood.histograms:
            figures["ood_histograms.png"] = ood.histograms
    if "bayes" in wanted:
        reason = not_applicable(family, cfg.train.conditional)
        if reason:
            notes.append(f"bayes not applicable: {reason}")
            tags[schema.eval_tag("bayes")] = f"not applicable: {reason}"
            return
        found, stamp = evaluate_bayes(model, train, classifier, images=opts.bayes_images,
                                      k=opts.k, batch_size=opts.batch_size, seed=opts.seed,
                                      device=device, quiet=opts.quiet)
        metrics.update(found)
        tags.update(stamp)


def format_table(result: EvalResult) -> str:
    """Metric | value | floor (real train vs real test) lines, then notes."""
    from eval.ood import auroc_lines

    m = result.metrics
    rows = [(k, v) for k, v in sorted(m.items())
            if not k.startswith((schema.FLOOR_PREFIX, schema.OOD_PREFIX))
            and not k.endswith((schema.STD, *schema.CI_SUFFIXES))]
    ci = any(k.endswith(schema.CI_SUFFIXES[0]) for k in m)
    lines = [f"{'metric':<22} {'value':>12} {'floor':>12}"
             + (f"  {'95% bootstrap interval':>24}" if ci else "")] if rows else []
    for key, value in rows:
        std = m.get(schema.std_key(key))
        floor = m.get(schema.floor_key(key))
        shown = f"{value:.4g}" + (f" ±{std:.2g}" if std is not None else "")
        line = f"{key:<22} {shown:>12} {'' if floor is None else f'{floor:.4g}':>12}"
        low, high = (m.get(k) for k in schema.ci_keys(key))
        if low is not None and high is not None:
            interval = f"[{low:.4g}, {high:.4g}]"
            line += f"  {interval:>24}"
        lines.append(line)
    lines += auroc_lines(result.metrics)
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def print_report(result: EvalResult, stream=None) -> None:
    stream = stream or sys.stdout  # looked up now: tests and callers may redirect it
    print(f"\neval of {result.model} (step {result.step}) in {result.seconds:.0f}s; "
          f"MLflow run {result.run_id}, artifacts {result.artifact_dir}", file=stream)
    print(format_table(result), file=stream)


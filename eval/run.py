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

from eval.extractors import EXTRACTORS, Extractor, cache_dir, dataset_key, get_extractor
from eval.fidelity import (FIDELITY_METRICS, IS_SPLITS, KID_SUBSET_SIZE, KID_SUBSETS,
                           PRC_NEIGHBORHOOD, RNG_SEED, check_kid_samples, extract_features,
                           fidelity_metrics)
from eval.likelihood import (NLLSums, bpd_key, data_description, nll_sums, pixel_bits,
                             reconstruction_metrics)
from eval.load import LoadedModel, load_model
from eval.probe import encode_all, probe_accuracy
from eval.samples import generate
from pipeline import VERSION, tracking
from pipeline.data import ImageData, load_config_split
from pipeline.errors import ConfigError
from pipeline.grids import grid_png
from pipeline.models import FAMILIES, can

ALL_METRICS = ("fid", "is", "kid", "prc", "bpd", "probe")
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
    metrics: tuple[str, ...] = ALL_METRICS
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
        for name in ("n_fake", "n_real", "kid_subset_size", "k", "workers", "batch_size",
                     "bpd_images", "probe_images"):
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
    if path.is_file():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if all(len(v) == len(data) for v in feats.values()):
                return feats
        except Exception:  # a truncated cache file: recompute
            pass
    feats = extract_features(ext, data.images, batch_size, f"features of {key}", quiet)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(feats, tmp)
    tmp.replace(path)
    return feats


def target_run(model: LoadedModel, opts: EvalOptions, notes: list[str]) -> tuple[str, bool]:
    """The MLflow run to log into, and whether this evaluation created it."""
    if opts.run_id:
        return opts.run_id, False
    if model.run_id:
        try:
            tracking.get_run(model.run_id)
            return model.run_id, False
        except ConfigError:
            notes.append(f"the checkpoint's MLflow run {model.run_id} is not in "
                         f"{tracking.tracking_uri()}; logging into a new run")
    tags = {"genbench.kind": "eval", "genbench.model": model.cfg.model,
            "genbench.dataset": model.cfg.data.dataset, "genbench.checkpoint": model.source,
            "genbench.checkpoint_run_id": model.run_id or ""}
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
    tags: dict[str, str] = {"eval.seed": str(opts.seed), "eval.device": str(device),
                            "eval.checkpoint_step": str(model.step),
                            "eval.image_shape": "x".join(map(str, test.image_shape))}
    tags.update({f"eval.versions.{k}": v for k, v in library_versions().items()})

    wanted = set(opts.metrics)
    fidelity = [m for m in FIDELITY_METRICS if m in wanted]
    if fidelity and not can(family, "sample"):
        reason = f"not applicable: {cfg.model} has no sampler"
        notes.append(f"FID/IS/KID/PR {reason}")
        tags["eval.fidelity"] = reason
        fidelity = []
    if opts.workers > 1 and "bpd" in wanted and nll_runner is None:
        raise ConfigError("--workers > 1 needs the Ray runner of the genbench CLI; "
                          "use `genbench eval` or --workers 1")

    extractors = [get_extractor(name, d.dataset, d.root, d.image_size, device,
                                opts.inception_weights, opts.quiet, opts.domain_epochs)
                  for name in opts.extractors] if fidelity else []

    need_train = bool(fidelity) or "probe" in wanted
    train = load_config_split(d, "train") if need_train else None
    fake = None
    if fidelity:
        fake = _fidelity(opts, model, train, extractors, fidelity, device, metrics, tags, notes)
    if "bpd" in wanted:
        _likelihood(opts, model, device, nll_runner, metrics, tags, notes)
    if "probe" in wanted:
        _probe(opts, model, train, device, metrics, tags, notes)

    run_id, created = target_run(model, opts, notes)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:6]}"  # never overwrites
    artifact_dir = f"eval/{stamp}"
    tags["eval.artifacts"] = artifact_dir
    tags["eval.metrics"] = ",".join(sorted(metrics))
    logger = tracking.RunLogger(run_id, tracking.tracking_uri())
    if metrics:
        logger.metrics(metrics, model.step)
    tracking.set_tags(run_id, tags)
    if fake is not None:
        logger.figure_png(grid_png(fake[:GRID_IMAGES]), f"{artifact_dir}/samples.png")
    record = {"run_id": run_id, "source": model.source, "step": model.step, "metrics": metrics,
              "protocol": tags, "notes": notes}
    # figure_png logs any bytes as a file artifact
    logger.figure_png(json.dumps(record, indent=2).encode(), f"{artifact_dir}/eval.json")
    logger.close()  # the writer is asynchronous: everything is written when evaluate returns
    if created:
        tracking.end_run(run_id)
    return EvalResult(run_id, cfg.model, model.step, metrics, tags, notes, artifact_dir,
                      time.time() - t0)


def _fidelity(opts, model: LoadedModel, train: ImageData, extractors: list[Extractor],
              fidelity: list[str], device, metrics, tags, notes) -> torch.Tensor:
    cfg, test = model.cfg, model.test
    n_real = opts.n_real or min(DEFAULT_N, len(test))
    n_fake = opts.n_fake or min(DEFAULT_N, len(test))
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
        check_kid_samples(min(n_fake, n_floor), n_real, kid_size)  # before the slow sampling
    reference = subset(test, n_real, opts.seed)
    floor_set = subset(train, n_floor, opts.seed + 1)
    freqs = train.class_frequencies() if cfg.train.conditional else None
    fake, labels = generate(cfg, model.nets, n_fake, test.image_shape, freqs, opts.seed,
                            opts.batch_size, device, opts.quiet)
    if labels is not None:  # the class mix the samples were drawn with, class 0 first
        counts = torch.bincount(labels, minlength=train.num_classes).tolist()
        tags["eval.sample_label_counts"] = ",".join(map(str, counts))
    key = dataset_key(cfg.data.dataset, cfg.data.image_size)
    ref_key = f"{key}-test-n{n_real}-seed{opts.seed}"
    floor_key = (f"{key}-train-val{cfg.data.val_fraction}-split{cfg.data.split_seed}"
                 f"-n{n_floor}-seed{opts.seed + 1}")
    channels = test.image_shape[0]
    for ext in extractors:
        f_fake = extract_features(ext, fake, opts.batch_size, "features of samples", opts.quiet)
        f_real = reference_features(ext, reference, ref_key, opts.batch_size, opts.quiet)
        f_floor = reference_features(ext, floor_set, floor_key, opts.batch_size, opts.quiet)
        metrics.update(fidelity_metrics(f_fake, f_real, ext, fidelity, kid_size or 0))
        floor = fidelity_metrics(f_floor, f_real, ext, fidelity, kid_size or 0, prefix="floor_")
        metrics.update({k: v for k, v in floor.items() if not k.endswith("_std")})
        p = f"eval.{ext.name}"
        tags.update({f"{p}.n_fake": str(n_fake), f"{p}.n_real": str(n_real),
                     f"{p}.reference_split": "test",
                     f"{p}.floor": f"{n_floor} real train images vs the reference",
                     f"{p}.input": "uint8 3x{}x{}{}".format(
                         *test.image_shape[1:], " (1 channel repeated)" if channels == 1 else ""),
                     f"{p}.seed": str(opts.seed), f"{p}.rng_seed": str(RNG_SEED),
                     f"{p}.is_splits": str(IS_SPLITS), f"{p}.prc_neighborhood":
                     str(PRC_NEIGHBORHOOD), f"{p}.labels": "drawn from train class frequencies"
                     if cfg.train.conditional else "unconditional"})
        if "kid" in fidelity:
            tags.update({f"{p}.kid_subset_size": str(kid_size), f"{p}.kid_subsets": str(KID_SUBSETS)})
        tags.update({f"{p}.{k}": v for k, v in ext.protocol().items()})
    return fake


def _likelihood(opts, model: LoadedModel, device, nll_runner, metrics, tags, notes) -> None:
    cfg, test = model.cfg, model.test
    family = FAMILIES[cfg.model]
    n = min(opts.bpd_images or len(test), len(test))
    data = test if n == len(test) else ImageData(test.images[:n], test.labels[:n],
                                                 test.num_classes)
    family = FAMILIES[cfg.model]
    if can(family, "reconstruct") and not can(family, "nll"):  # a stand-in for a likelihood
        metrics.update(reconstruction_metrics(cfg, model.nets, data, opts.batch_size, device,
                                              opts.quiet))
        tags.update({"eval.recon.split": "test", "eval.recon.images": str(n),
                     "eval.recon.scale": "mse on [-1, 1] pixels; psnr for [0, 1] pixels"})
    if not can(family, "nll"):
        reason = f"not applicable: {family.LIKELIHOOD_NOTE}"
        notes.append(f"bpd {reason}")
        tags["eval.bpd"] = reason
        return
    if opts.workers > 1:
        sums = nll_runner(model.payload, k=opts.k, images=n, batch_size=opts.batch_size,
                          seed=opts.seed, workers=opts.workers)
    else:
        sums = nll_sums(cfg, model.nets, data, opts.k, opts.batch_size, seed=opts.seed,
                        device=device, quiet=opts.quiet)
    bits = pixel_bits(family, cfg.family)
    metrics[bpd_key(bits)] = sums.bits_per_dim
    k = opts.k if family.LIKELIHOOD == "bound" else 1  # exact likelihoods ignore k
    what = family.LIKELIHOOD_NOTE + (f"; k={k}" if family.LIKELIHOOD == "bound" else "")
    tags.update({"eval.bpd": what, "eval.bpd.k": str(k),
                 "eval.bpd.split": "test", "eval.bpd.images": str(sums.images),
                 "eval.bpd.data": data_description(bits),
                 "eval.bpd.workers": str(opts.workers), "eval.bpd.seed": str(opts.seed),
                 "eval.bpd.conditional": str(cfg.train.conditional).lower()})


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
        tags["eval.probe"] = reason
        return
    fit_set = subset(train, opts.probe_images or len(train), opts.seed)
    z_train = encode_all(cfg, model.nets, fit_set, device=device, quiet=opts.quiet)
    z_test = encode_all(cfg, model.nets, model.test, device=device, quiet=opts.quiet)
    metrics["probe_accuracy"] = probe_accuracy(z_train, fit_set.labels, z_test,
                                               model.test.labels, model.test.num_classes)
    tags.update({"eval.probe": "multinomial logistic regression (L-BFGS, L2 1e-4) on the "
                 "standardized encoder mean z", "eval.probe.train_images": str(len(fit_set)),
                 "eval.probe.test_images": str(len(model.test))})


def format_table(result: EvalResult) -> str:
    """Metric | value | floor (real train vs real test) lines, then notes."""
    rows = [(k, v) for k, v in sorted(result.metrics.items())
            if not k.startswith("floor_") and not k.endswith("_std")]
    lines = [f"{'metric':<22} {'value':>12} {'floor':>12}"]
    for key, value in rows:
        std = result.metrics.get(f"{key}_std")
        floor = result.metrics.get(f"floor_{key}")
        shown = f"{value:.4g}" + (f" ±{std:.2g}" if std is not None else "")
        lines.append(f"{key:<22} {shown:>12} {'' if floor is None else f'{floor:.4g}':>12}")
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def print_report(result: EvalResult, stream=None) -> None:
    stream = stream or sys.stdout  # looked up now: tests and callers may redirect it
    print(f"\neval of {result.model} (step {result.step}) in {result.seconds:.0f}s; "
          f"MLflow run {result.run_id}, artifacts {result.artifact_dir}", file=stream)
    print(format_table(result), file=stream)


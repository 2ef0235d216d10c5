"""`genbench eval`: evaluate a trained run and log the results as one evaluation record.

Order of work: load the model, pick the selected metrics from the registry (eval/metrics/; one
that does not apply to the family is skipped with the reason), compute each (sample quality
first: a missing Inception file fails before any slow work), then log.

Each `genbench eval` is an immutable record: a nested MLflow run under the evaluated run
(tagged genbench.kind=evaluation, mlflow.parentRunId=<run>) whose params are this evaluation's
protocol (params cannot change) and whose metrics are its numbers, plus eval/<timestamp>/
(eval.json, samples.png, figures) in the evaluated run's artifacts. The numbers are also logged
into the evaluated run (its latest values: what older readers and MLflow's run view show) with
the protocol as tags, which the next evaluation overwrites; the report reads every number with
the stamps of the record that made it (report/records.py), never those tags.
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

from eval import metrics as registry
from eval.extractors import EXTRACTORS
from eval.fidelity import FIDELITY_METRICS  # noqa: F401  (re-exported for older callers)
from eval.likelihood import NLLSums
from eval.load import LoadedModel, load_model
from eval.metrics.context import EvalContext, subset  # noqa: F401  (subset: re-exported)
from eval.metrics.fidelity import (DEFAULT_N, MIN_SAMPLES, FidelityPlan,  # noqa: F401
                                   plan_fidelity, real_sets, reference_features, score_fidelity)
from eval.ood import DEFAULT_BACKGROUND_STEPS as OOD_BACKGROUND_STEPS
from eval.ood import DEFAULT_IMAGES as OOD_IMAGES
from eval.ood.sets import SETS as OOD_SETS
from eval.ood.sets import check_names as check_ood_sets
from pipeline import VERSION, schema, tracking
from pipeline.errors import ConfigError
from pipeline.grids import grid_png
from pipeline.models import FAMILIES, can

# the built-ins; registered metrics (registry.names()) are valid --metrics values too
ALL_METRICS = tuple(m.name for m in registry.BUILT_IN)
# what runs without --metrics: ood (a background model to train) and bayes (a pass per class)
# cost more and are asked for by name
DEFAULT_METRICS = tuple(m.name for m in registry.BUILT_IN if m.default)
DEFAULT_K = 16         # VAE importance samples (k = 1 is the ELBO)
GRID_IMAGES = 64
CAPABILITY_NOUNS = {"sample": "sampler", "encode": "encoder", "nll": "likelihood",
                    "reconstruct": "decoder"}

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
    bootstrap_metrics: tuple = ("fid", "kid")   # which of them (KID's costs ~100x FID's)
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
        known = registry.names()
        unknown = [m for m in self.metrics if m not in known]
        if unknown or not self.metrics:
            raise ConfigError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                              f"use a comma list of {','.join(known)}")
        unknown = [e for e in self.extractors if e not in EXTRACTORS]
        if unknown or not self.extractors:
            raise ConfigError(f"unknown extractor(s) {', '.join(unknown) or '(none given)'}; "
                              f"use {' or '.join(EXTRACTORS)}")
        check_ood_sets(self.ood_sets)  # built-in names, or folders of images
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
        unknown = [m for m in self.bootstrap_metrics if m not in ("fid", "kid")]
        if unknown or not self.bootstrap_metrics:
            raise ConfigError(f"--bootstrap-metrics takes fid, kid or fid,kid, got "
                              f"{','.join(unknown) or '(none)'}")
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
    record_id: str = ""     # the evaluation's own MLflow run (a child of run_id)
    group_seconds: dict[str, float] = field(default_factory=dict)  # where the time went


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
    """Evaluate one run or checkpoint; log one evaluation record; return what was logged."""
    opts.validate()
    t0 = time.time()
    device = resolve_device(opts.device)
    model = load_model(opts.run_id, opts.checkpoint, device)
    cfg = model.cfg
    family = FAMILIES[cfg.model]
    ctx = EvalContext(opts, model, device, nll_runner)
    ctx.stamp("seed", value=opts.seed)
    ctx.stamp("device", value=device)
    ctx.stamp("checkpoint_step", value=model.step)
    ctx.stamp("ema", value=model.ema)  # the nets evaluated with averaged weights, or "none"
    ctx.stamp("image_shape", value="x".join(map(str, model.test.image_shape)))
    ctx.tags.update({schema.eval_tag("versions", k): v for k, v in library_versions().items()})
    if opts.workers > 1 and "bpd" in opts.metrics and nll_runner is None:
        raise ConfigError("--workers > 1 needs the Ray runner of the genbench CLI; "
                          "use `genbench eval` or --workers 1")
    group_seconds: dict[str, float] = {}
    for compute, group in planned(opts.metrics):
        missing = [c for m in group for c in m.needs if not can(family, c)]
        if missing:
            reason = (f"not applicable: {cfg.model} has no "
                      f"{CAPABILITY_NOUNS.get(missing[0], missing[0])}")
            ctx.notes.append(f"{'/'.join(m.label for m in group)} {reason}")
            ctx.stamp(group_name(compute, group), value=reason)
            continue
        started = time.time()
        compute(ctx, [m.name for m in group])
        group_seconds[group_name(compute, group)] = round(time.time() - started, 1)

    run_id, created = target_run(model, opts, ctx.notes)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:6]}"  # never overwrites
    artifact_dir = f"eval/{stamp}"
    tags, metrics = ctx.tags, ctx.metrics
    tags[schema.eval_tag("artifacts")] = artifact_dir
    tags[schema.eval_tag("metrics")] = ",".join(sorted(metrics))
    for name in ctx.figures:
        tags[schema.figure_tag(name.split("_")[0])] = f"{artifact_dir}/{name}"
    record_id = start_record(run_id, model, opts, tags)
    tags[schema.EVAL_RECORD] = record_id
    logger = tracking.RunLogger(run_id, tracking.tracking_uri())
    try:
        if metrics:
            logger.metrics(metrics, model.step)
        tracking.set_tags(run_id, tags)
        if ctx.fake is not None:
            logger.figure_png(grid_png(ctx.fake[:GRID_IMAGES]), f"{artifact_dir}/samples.png")
        for name, png in ctx.figures.items():
            logger.figure_png(png, f"{artifact_dir}/{name}")
        record = {"run_id": run_id, "record_id": record_id, "source": model.source,
                  "step": model.step, "metrics": metrics, "protocol": tags,
                  "notes": ctx.notes, "seconds": group_seconds, **ctx.record}
        # figure_png logs any bytes as a file artifact
        logger.figure_png(json.dumps(record, indent=2).encode(), f"{artifact_dir}/eval.json")
    finally:
        logger.close()  # the writer is asynchronous: everything is written when evaluate returns
    finish_record(record_id, metrics, model.step)
    if created:
        tracking.end_run(run_id)
    return EvalResult(run_id, cfg.model, model.step, metrics, tags, ctx.notes, artifact_dir,
                      time.time() - t0, record_id, group_seconds)


def planned(selected) -> list[tuple[Callable, list]]:
    """The selected metrics in registry order, grouped by their compute (one call per group)."""
    groups: dict[Callable, list] = {}
    for metric in registry.all_metrics():
        if metric.name in selected:
            groups.setdefault(metric.function(), []).append(metric)
    return list(groups.items())


def group_name(compute: Callable, group: list) -> str:
    """The stamp a skipped group is recorded under: eval.<name> of a lone metric, else the
    compute's module (eval.fidelity for fid,is,kid,prc)."""
    if len(group) == 1:
        return group[0].name
    return compute.__module__.rsplit(".", 1)[-1]


def start_record(run_id: str, model: LoadedModel, opts: EvalOptions, tags: dict) -> str:
    """This evaluation's own run, nested under the evaluated one: its protocol as params,
    written once; finish_record adds its numbers and ends it."""
    parent = tracking.get_run(run_id)
    params = {k: v for k, v in tags.items() if k.startswith(schema.EVAL_PREFIX)}
    params[schema.eval_tag("selected")] = ",".join(opts.metrics)
    name = "eval-" + tags[schema.eval_tag("artifacts")].rsplit("/", 1)[-1]
    record = tracking.client().create_run(parent.info.experiment_id, run_name=name,
                                          tags=schema.record_tags(run_id, parent.data.tags))
    tracking.log_params(record.info.run_id, params)
    return record.info.run_id


def finish_record(record_id: str, metrics: dict, step: int) -> None:
    logger = tracking.RunLogger(record_id, tracking.tracking_uri())
    try:
        if metrics:
            logger.metrics(metrics, step)
    finally:
        logger.close()
    tracking.end_run(record_id)


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
    if result.group_seconds:  # the slow parts, longest first
        spent = sorted(result.group_seconds.items(), key=lambda kv: -kv[1])
        print("time: " + ", ".join(f"{name} {s:.0f}s" for name, s in spent), file=stream)
    print(format_table(result), file=stream)


"""Metrics: the registry. A metric is one module (its `compute`) and one line here.

`genbench eval --metrics a,b` looks each name up here and calls its compute; the report
(report/) labels, orders and judges every logged key through the same entries, so a metric
registered here shows up in both without either knowing its name. Mirrors the family registry
(pipeline/models/__init__.py): built-ins below, `register()` from the user's own code, and
installed packages that declare an entry point in the group `genbench.metrics`
(`[project.entry-points."genbench.metrics"] sharpness = "my_pkg.sharpness:METRIC"`, the value
naming a Metric object).

A Metric says:
    name       its --metrics value
    label      what the report calls it (the column header)
    direction  "lower" or "higher" is better; "" where neither is (the report's arrow)
    needs      family capabilities it needs (pipeline.models.can: "sample", "nll", "encode",
               "reconstruct"); eval skips a family without one, with a note and the stamp
               eval.<name> = "not applicable: ..."
    stamps     the protocol fields it stamps, eval.<name>.<field> (schema.eval_tag): what makes
               two of its numbers comparable; the report shows them beside the number
    compute    "module:function" (imported when first used) or a function:
               compute(ctx, names) with ctx an eval.metrics.context.EvalContext and names the
               selected metrics that share this compute (fid,kid: one sampling pass for both);
               it writes ctx.metrics[key], ctx.stamp(name, field, value), ctx.notes
    outputs    the MLflow keys it logs, as Outputs (default: one key, the name itself)
    default    run without --metrics (the built-ins' cheap ones)
    section    "main" (the report's results table) or "ood" (its own section)

Only code fills the registry (never a config or a run's record), as for families. Like a
family registered with register(), a metric registered in a process exists only there.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from dataclasses import dataclass, field
from typing import Callable

from pipeline import schema

ENTRY_POINT_GROUP = "genbench.metrics"
DIRECTIONS = ("lower", "higher", "")
SECTIONS = ("main", "ood")
ARROWS = {"lower": "↓", "higher": "↑", "": ""}


@dataclass(frozen=True)
class Output:
    """One MLflow key a metric logs. per_extractor: the key is <key>_<extractor> (fid_domain),
    a sample-quality number whose protocol is the extractor's (schema.FIDELITY_PROTOCOL)."""
    key: str
    label: str
    direction: str
    needs: tuple[str, ...] = ()
    without: str | None = None    # n/a where the family has this capability (mse: no nll)
    per_extractor: bool = False


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    direction: str
    needs: tuple[str, ...] = ()
    stamps: tuple[str, ...] = ()
    compute: str | Callable = ""
    outputs: tuple[Output, ...] = ()
    default: bool = False
    section: str = "main"

    def __post_init__(self):
        if isinstance(self.needs, str):
            object.__setattr__(self, "needs", (self.needs,))
        if not self.outputs:
            object.__setattr__(self, "outputs", (Output(self.name, self.label, self.direction,
                                                        self.needs),))
        check(self)

    def function(self) -> Callable:
        if callable(self.compute):
            return self.compute
        module, _, name = self.compute.partition(":")
        return getattr(importlib.import_module(module), name)


def check(metric: Metric) -> None:
    if not metric.name or not metric.name.replace("_", "").isalnum() or \
            metric.name != metric.name.lower():
        raise ValueError(f"metric name {metric.name!r}: use lower-case letters, digits and _")
    if metric.direction not in DIRECTIONS or any(o.direction not in DIRECTIONS
                                                 for o in metric.outputs):
        raise ValueError(f"metric {metric.name}: direction must be one of {DIRECTIONS}")
    if metric.section not in SECTIONS:
        raise ValueError(f"metric {metric.name}: section must be one of {SECTIONS}")
    if not metric.compute:
        raise ValueError(f"metric {metric.name}: give compute, a function or 'module:function'")


def _fidelity(metric: str, label: str, direction: str) -> Output:
    return Output(metric, label, direction, ("sample",), per_extractor=True)


FIDELITY_STAMPS = schema.FIDELITY_PROTOCOL + ("seed", "kid_subset_size", "bootstrap")
MEMORIZATION_STAMPS = ("images", "test_images", "train_images", "reference", "method", "features",
                       "threshold", "cells", "copy_fraction")
SANITY_STAMPS = ("n_fake", "n_real", "train", "collapsed", "noise", "reference")
BUILT_IN = (  # the order eval computes them in: sample quality first (its checks fail fastest)
    Metric("fid", "FID", "lower", ("sample",), FIDELITY_STAMPS, "eval.metrics.fidelity:compute",
           (_fidelity("fid", "FID", "lower"),), default=True),
    Metric("is", "IS", "higher", ("sample",), FIDELITY_STAMPS, "eval.metrics.fidelity:compute",
           (_fidelity("is", "IS", "higher"),), default=True),
    Metric("kid", "KID", "lower", ("sample",), FIDELITY_STAMPS, "eval.metrics.fidelity:compute",
           (_fidelity("kid", "KID", "lower"),), default=True),
    Metric("prc", "precision/recall", "higher", ("sample",), FIDELITY_STAMPS,
           "eval.metrics.fidelity:compute", (_fidelity("precision", "precision", "higher"),
                                             _fidelity("recall", "recall", "higher")),
           default=True),
    Metric("dc", "density/coverage", "higher", ("sample",), FIDELITY_STAMPS + ("dc_neighborhood",),
           "eval.metrics.fidelity:compute", (_fidelity("density", "density", "higher"),
                                             _fidelity("coverage", "coverage", "higher")),
           default=True),
    Metric("memorization", "memorization (C_T)", "", ("sample",), MEMORIZATION_STAMPS,
           "eval.metrics.memorization:compute",
           (Output("c_t_pixels", "C_T pixels", "", ("sample",)),
            Output("c_t_features", "C_T features", "", ("sample",)),
            Output("copy_fraction", "copy fraction", "lower", ("sample",))), default=True),
    Metric("sanity", "sanity panel", "", ("sample",), SANITY_STAMPS, "eval.metrics.sanity:compute",
           (Output("sanity", "sanity panel", ""),), default=True),  # report/sanity.py reads it
    Metric("bpd", "bits/dim", "lower", (), ("k", "images", "split", "data", "seed"),
           "eval.metrics.likelihood:compute",
           (Output(schema.BPD_TEST, "bits/dim", "lower", ("nll",)),
            Output(schema.BPD_BINARIZED_TEST, "bits/dim, binarized data (1-bit)", "lower",
                   ("nll",)),
            Output(schema.NLL_TEST, "NLL nats", "lower", ("nll",)),
            Output(schema.MSE_TEST, "MSE", "lower", ("reconstruct",), without="nll"),
            Output(schema.PSNR_TEST, "PSNR dB", "higher", ("reconstruct",), without="nll")),
           default=True),
    Metric("probe", "probe acc.", "higher", ("encode",), ("train_images", "test_images"),
           "eval.metrics.probe:compute",
           (Output(schema.PROBE_ACCURACY, "probe acc.", "higher", ("encode",)),), default=True),
    # class-conditional runs only (one sampling pass for both; others: "not applicable")
    Metric("cas", "CAS", "higher", ("sample",),
           ("per_class", "epochs", "seed", "classifier", "test_images"),
           "eval.metrics.cas:compute",
           (Output("cas", "CAS", "higher", ("sample",)),
            Output("cas_real", "CAS, real train images (ceiling)", "", ("sample",)))),
    Metric("intra_fid", "intra-class FID", "lower", ("sample",),
           schema.FIDELITY_PROTOCOL + ("seed", "intra_fid_per_class"),
           "eval.metrics.cas:compute", (_fidelity("intra_fid", "intra-class FID", "lower"),)),
    # the generative-vs-discriminative study: the report's OOD section reads their keys
    Metric("ood", "OOD detection", "higher", (), ("images_per_set", "classifier", "background"),
           "eval.metrics.study:compute", (Output(schema.OOD_PREFIX, "OOD AUROC", "higher"),),
           section="ood"),
    Metric("bayes", "Bayes classifier", "higher", (), ("images", "k"),
           "eval.metrics.study:compute", (Output(schema.BAYES + "_", "Bayes", "higher"),),
           section="ood"),
)
_REGISTRY: dict[str, Metric] = {m.name: m for m in BUILT_IN}
_ENTRY_POINTS: dict[str, str] = {}
_discovered = False


def register(metric: Metric) -> None:
    """Add a metric from your own code: `register(Metric("sharpness", "sharpness", "higher",
    ("sample",), ("images",), compute))`. Registering the same metric again is a no-op."""
    _discover()
    known = _REGISTRY.get(metric.name)
    if known is not None and known != metric:
        raise ValueError(f"metric {metric.name!r} is already registered; pick another name")
    _REGISTRY[metric.name] = metric


def unregister(name: str) -> None:
    """Remove a metric registered outside this module (built-in ones stay)."""
    if name in {m.name for m in BUILT_IN}:
        raise ValueError(f"{name} is a built-in metric")
    _REGISTRY.pop(name, None)


def _discover() -> None:
    """Add the metrics installed packages declare under ENTRY_POINT_GROUP, once per process."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"{ep.value} (entry point of {ep.dist.name if ep.dist else 'a package'})"
        if ep.name in _REGISTRY:
            warnings.warn(f"genbench: metric {ep.name!r} of {where} ignored: the name is taken",
                          stacklevel=2)
            continue
        try:
            metric = ep.load()
        except Exception as e:  # a broken plug-in must not break genbench
            warnings.warn(f"genbench: metric {ep.name!r} of {where} ignored: {e}", stacklevel=2)
            continue
        if not isinstance(metric, Metric) or metric.name != ep.name:
            warnings.warn(f"genbench: metric {ep.name!r} of {where} ignored: it must name an "
                          f"eval.metrics.Metric called {ep.name!r}", stacklevel=2)
            continue
        _REGISTRY[ep.name] = metric
        _ENTRY_POINTS[ep.name] = where


def names() -> list[str]:
    _discover()
    return list(_REGISTRY)


def get(name: str) -> Metric:
    _discover()
    return _REGISTRY[name]


def all_metrics() -> list[Metric]:
    _discover()
    return list(_REGISTRY.values())


def defaults() -> tuple[str, ...]:
    return tuple(m.name for m in all_metrics() if m.default)


# --- what the report asks: which registered output a logged key is ----------------------------
def output_of(key: str) -> tuple[Metric, Output] | None:
    """The metric and output behind a logged key (fid_domain -> fid's "fid" output); None for
    keys no metric claims (training curves, floors, spreads, intervals)."""
    parsed = schema.parse_fidelity_key(key)
    for metric in all_metrics():
        for out in metric.outputs:
            if out.per_extractor:
                if parsed and parsed[0] == out.key:
                    return metric, out
            elif metric.section == "ood":
                if key.startswith(out.key):
                    return metric, out
            elif key == out.key:
                return metric, out
    return None


def main_table_key(key: str) -> bool:
    """A key of the report's results table: a registered main-section output."""
    found = output_of(key)
    return found is not None and found[0].section == "main"


def label(key: str) -> str:
    """fid_domain -> "FID (domain)"; bpd_test -> "bits/dim"; an unknown key -> itself."""
    found = output_of(key)
    if found is None:
        return key
    out = found[1]
    return f"{out.label} ({schema.extractor_of(key)})" if out.per_extractor else out.label


def direction(key: str) -> str:
    found = output_of(key)
    return found[1].direction if found else ""


def applicable(module, key: str) -> bool:
    """Whether a family (module) can have this key at all (a GAN's bits/dim: no, never 0)."""
    from pipeline.models import can

    found = output_of(key)
    if found is None:
        return True
    metric, out = found
    needs = out.needs or metric.needs
    return all(can(module, c) for c in needs) and not (out.without and can(module, out.without))


def stamp_fields(key: str) -> tuple[str, ...]:
    """The stamp tags (eval.<...>) of the metric behind a key, for the report to show."""
    found = output_of(key)
    if found is None:
        return ()
    metric, out = found
    if out.per_extractor:
        return tuple(schema.extractor_tag(schema.extractor_of(key), f) for f in metric.stamps)
    return (schema.eval_tag(metric.name),) + tuple(schema.eval_tag(metric.name, f)
                                                   for f in metric.stamps)

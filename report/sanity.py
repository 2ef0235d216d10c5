"""The metric sanity panel: sets with known right answers, scored like the models' samples.

eval (eval/metrics/sanity.py) logs, per evaluation and extractor, the FID, precision, recall,
density and coverage of three sets against the fidelity reference: real train images, a
mode-collapsed set (one class) and uniform noise. Here each distinct panel (extractor, n) is
judged against what those numbers must be; a failed expectation is one sentence at the top of
the report: a metric that gets a known case wrong (precision and recall swapped, say) makes
every number of that protocol suspect. Reads only what eval logged: no Ray, no model.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from pipeline import schema
from report.data import fmt
from report.records import source_of, stamps_of

PREFIX = "sanity_"   # eval.metrics.sanity.PREFIX (the report does not import eval's modules)
SETS = {"train": "real train vs real test", "collapsed": "mode-collapsed (one class)",
        "noise": "uniform noise"}
METRICS = ("fid", "precision", "recall", "density", "coverage")
KEY_RE = re.compile(rf"^{PREFIX}(?P<set>{'|'.join(SETS)})_(?P<metric>{'|'.join(METRICS)})"
                    rf"_(?P<ext>[a-z0-9]+)$")
# Bounds relative to the real-vs-real row where the features and n set the scale. Measured
# with the quick preset's domain classifier (Fashion-MNIST, 2 epochs), real vs real P/R ~0.9:
#   2,000 vs 2,000: one class recall 0.47, coverage 0.20; noise precision 0.05, FID 373 (real 1.0)
#     300 vs   300: one class recall 0.54, coverage 0.22; noise precision 0.53, FID 378 (real 8.0)
# (k-NN radii grow as n shrinks, so noise falls inside the real manifold more often).
NEAR_ONE = 0.6         # real vs real: precision, recall, density, coverage at least this
FLOOR_SLACK = 0.1      # real vs real FID within 10% of the floor logged beside it
COLLAPSED_LOW = 0.7    # one class: recall and coverage at most this x real vs real's ...
COLLAPSED_HIGH = 0.8   # ... precision at least this x real vs real's
NOISE_PRECISION = 0.75  # noise: precision at most this x real vs real's
MIN_JUDGED = 200       # fewer images per set: shown, not judged (k-NN metrics too noisy)
NOISE_OVER_REAL = 10.0  # noise: FID at least this x real vs real's


@dataclass
class Check:
    expectation: str     # what must hold, in words
    passed: bool
    value: str           # what was measured


@dataclass
class Panel:
    extractor: str
    n_fake: str
    n_real: str
    families: list[str]
    values: dict                 # (set, metric) -> float
    checks: list[Check] = field(default_factory=list)
    records: list[str] = field(default_factory=list)
    unjudged: str = ""           # why no expectation was judged

    @property
    def title(self) -> str:
        return (f"{self.extractor} features, {self.n_fake} images per set vs {self.n_real} "
                f"test images")

    @property
    def table(self) -> list[tuple[str, list[str]]]:
        """[(set label, [value text per METRICS])]"""
        return [(label, [fmt(self.values.get((s, m))) for m in METRICS])
                for s, label in SETS.items()]

    @property
    def failures(self) -> list[str]:
        return [f"Sanity check failed ({self.title}): expected {c.expectation}, got {c.value};"
                f" treat the sample-quality numbers of this protocol with suspicion."
                for c in self.checks if not c.passed]


def sanity_panels(rows: list) -> list[Panel]:
    """One panel per extractor and n (families evaluated alike share one), judged."""
    panels: dict[tuple, Panel] = {}
    for row in rows:
        found: dict[str, dict] = {}
        for key, value in row.metrics.items():
            m = KEY_RE.match(key)
            if m and value is not None:
                found.setdefault(m["ext"], {})[(m["set"], m["metric"])] = value
        for ext, values in found.items():
            any_key = f"{PREFIX}train_fid_{ext}"
            stamps = stamps_of(row, any_key if any_key in row.metrics else next(
                k for k in row.metrics if KEY_RE.match(k) and k.endswith("_" + ext)))
            n_fake = stamps.get(schema.eval_tag("sanity", "n_fake"), "?")
            n_real = stamps.get(schema.eval_tag("sanity", "n_real"), "?")
            ident = (ext, n_fake, n_real, tuple(sorted((k, round(v, 9))
                                                       for k, v in values.items())))
            panel = panels.setdefault(ident, Panel(ext, n_fake, n_real, [], values))
            panel.families.append(row.family)
            source = source_of(row, any_key)
            if source and source.record_id not in panel.records:
                panel.records.append(source.record_id)
    out = list(panels.values())
    for panel in out:
        if panel.n_fake.isdigit() and int(panel.n_fake) < MIN_JUDGED:
            panel.unjudged = (f"not judged: {panel.n_fake} images per set are too few for "
                              f"k-NN metrics (at least {MIN_JUDGED})")
        else:
            panel.checks = judge(panel, rows)
    return out


def model_fids(panel: Panel, rows: list) -> dict[str, float]:
    """{family: FID} of the models measured with the panel's extractor and n."""
    key = schema.fidelity_key("fid", panel.extractor)
    out = {}
    for row in rows:
        value = row.metrics.get(key)
        if value is None or not math.isfinite(value):
            continue
        n = stamps_of(row, key).get(schema.extractor_tag(panel.extractor, "n_fake"))
        if n is None or n == panel.n_fake:
            out[row.family] = value
    return out


def judge(panel: Panel, rows: list) -> list[Check]:
    v = panel.values
    checks: list[Check] = []

    def check(case: str, metric: str, expectation: str, ok) -> None:
        value = v.get((case, metric))
        if value is None:
            return   # not logged (e.g. an evaluation without density/coverage): nothing to judge
        checks.append(Check(f"{SETS[case]}: {metric} {expectation}", bool(ok(value)),
                            f"{metric} {fmt(value)}"))

    # Coverage counts the real images with a generated one in their k-NN ball: with fewer
    # generated than real images it stays below 1 even for real images (300 vs 2,000: ~0.5),
    # so its "near 1" holds, and is judged, only where the sets are the same size.
    same_size = not (panel.n_fake.isdigit() and panel.n_real.isdigit()) or \
        int(panel.n_fake) >= int(panel.n_real)
    for metric in ("precision", "recall", "density") + (("coverage",) if same_size else ()):
        check("train", metric, f">= {NEAR_ONE} (near 1)", lambda x: x >= NEAR_ONE)
    floors = [row.metrics.get(schema.floor_key(schema.fidelity_key("fid", panel.extractor)))
              for row in rows if row.family in panel.families]
    floor = next((f for f in floors if f is not None), None)
    if floor is not None:
        check("train", "fid", f"near the floor ({fmt(floor)})",
              lambda x: abs(x - floor) <= FLOOR_SLACK * floor + 1e-6)
    def relative(case, metric, factor, low: bool, what: str) -> None:
        real = v.get(("train", metric))
        if real is None:
            return
        bound = factor * real
        check(case, metric, f"{'<=' if low else '>='} {fmt(bound)} ({what}: {factor:g} x real "
                            f"vs real's {fmt(real)})",
              (lambda x: x <= bound) if low else (lambda x: x >= bound))

    relative("collapsed", "precision", COLLAPSED_HIGH, False, "high")
    relative("collapsed", "recall", COLLAPSED_LOW, True, "low")
    relative("collapsed", "coverage", COLLAPSED_LOW, True, "low")
    relative("noise", "precision", NOISE_PRECISION, True, "near 0")
    relative("noise", "fid", NOISE_OVER_REAL, False, "far above real")
    fids = model_fids(panel, rows)
    if fids:
        worst = max(fids, key=fids.get)
        check("noise", "fid", f"above every model's FID (worst: {worst}, {fmt(fids[worst])})",
              lambda x: x > fids[worst])
    return checks


def sanity_failures(panels: list[Panel]) -> list[str]:
    """One sentence per failed expectation, for the top of the report."""
    return [s for p in panels for s in p.failures]

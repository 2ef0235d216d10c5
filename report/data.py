"""What a report holds: its rows, cells, columns, sweeps and images (dataclasses), the metric
names it knows, and how numbers are written. report_collect.py fills it from MLflow,
report_tables.py builds the tables, report_sweeps.py reads the sweeps.

Driven by what MLflow holds rather than by fixed lists: a metric named `<fid|is|kid|precision|
recall>_<extractor>` becomes a column under that extractor, `floor_<metric>` goes to the floor
table, `*_test` and `probe_*` to the likelihood/encoder columns, and params or tags under the
protocol prefixes to the protocol table; names added later show up without changes here.
Anything that is missing (a family never trained, a failed run, no eval, no sweep) is recorded
as a sentence for the report to show, never an exception.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

KIND_TAG = "genbench.kind"
EXTERNAL = "external"     # eval --samples runs: sample-quality metrics only, no training
# KID beside FID: FID is biased by n, KID is not, so the pair shows how much of a gap is bias.
FIDELITY = ("fid", "kid", "is", "precision", "recall", "f_score", "density", "coverage")
FIDELITY_RE = re.compile(rf"^(?P<metric>{'|'.join(FIDELITY)})_(?P<ext>[a-z0-9]+)$")
LIKELIHOOD_ORDER = ("bpd_test", "bpd_binarized_test", "nll_test", "mse_test", "psnr_test",
                    "probe_accuracy")
# bpd_binarized_test: a Bernoulli decoder on 1-bit data (uniform = 1.0), never beside 8-bit bpd
LABELS = {"bpd_test": "bits/dim", "bpd_binarized_test": "bits/dim, binarized data (1-bit)",
          "nll_test": "NLL nats", "mse_test": "MSE", "psnr_test":
          "PSNR dB", "probe_accuracy": "probe acc.", "fid": "FID", "is": "IS", "kid": "KID",
          "precision": "precision", "recall": "recall", "f_score": "F", "density": "density",
          "coverage": "coverage"}
LOWER_IS_BETTER = {"fid", "kid", "bpd_test", "bpd_binarized_test", "nll_test", "mse_test"}
# Params and tags that stamp how a metric was measured (eval writes them).
PROTOCOL_PREFIXES = ("eval.", "protocol.", "fidelity.", "likelihood.", "probe.", "floor.")
VERSION_TAGS = ("genbench.version", "git.commit", "torch.version", "ray.version",
                "mlflow.version", "python.version", "hardware.cpu", "hardware.cpus",
                "hardware.gpu")
IMAGE_DIRS = ("samples", "reconstructions")  # first one a run has is its grid
NOT_TRAINING = ("floor_", "ood_", "bayes_", "classifier_")  # eval metrics, not training curves
OOD_PREFIXES = ("eval.ood", "eval.bayes")  # stamps that the OOD section summarises


@dataclass
class Image:
    name: str        # file name under images/ (Markdown) and alt text
    png: bytes
    caption: str


@dataclass
class Cell:
    text: str                  # what the reader sees
    key: str = ""              # MLflow metric / param behind it
    value: float | None = None  # the exact number (HTML data-value), None when not a number
    note: str = ""             # tooltip / footnote


@dataclass
class Column:
    key: str                          # the MLflow metric or param behind it
    label: str
    group: str
    id: str = ""                      # unique among the table's columns (default: key)
    protocol: tuple | None = None     # sample-quality columns: every value in it has this one

    def __post_init__(self):
        self.id = self.id or self.key


@dataclass
class SeedRun:
    """One finished run of a row: rows with several seeds show mean ± std over these."""
    seed: str
    run_id: str
    metrics: dict
    params: dict
    tags: dict

    @property
    def stamps(self) -> dict:
        return {**self.params, **self.tags}


@dataclass
class FamilyRow:
    family: str
    run_id: str
    run_name: str
    status: str
    dataset: str
    metrics: dict
    params: dict
    tags: dict
    derived: dict = field(default_factory=dict)    # median images/s, wall seconds
    cells: dict = field(default_factory=dict)      # column id -> Cell
    seeds: list = field(default_factory=list)      # SeedRun per seed (the row's runs)
    external: bool = False                         # samples from outside genbench
    grid: Image | None = None
    curves: Image | None = None
    refs: list = field(default_factory=list)       # (column id, Reference)
    notes: list[str] = field(default_factory=list)


@dataclass
class Sweep:
    run_id: str
    name: str
    family: str
    status: str
    metric: str
    mode: str
    best_value: float | None
    best_trial: str
    swept: dict                   # hyperparameter -> best value (text)
    best_config: str              # best_config.yaml as logged
    header: list[str]
    rows: list[list[str]]         # results.csv, best first
    trials: int
    plots: list[Image]


@dataclass
class ReportData:
    experiment: str
    experiment_id: str
    tracking_uri: str
    generated: str
    datasets: list[str]
    columns: list[Column]
    rows: list[FamilyRow]
    floor_columns: list[str]
    floor_rows: list[tuple[str, dict]]          # (label, {floor key: Cell})
    protocol: list[tuple[str, dict]]            # (key, {family: value})
    versions: list[tuple[str, dict]]            # (tag, {family: value})
    sweeps: list[Sweep]
    runs: list[dict]                            # every run, for traceability
    missing: list[str]
    reference_note: str = ""                    # why no published number is shown
    report_run_id: str = ""
    seed_rows: list = field(default_factory=list)  # (family, SeedRun, {column id: Cell})
    ood: object = None                          # eval.report_ood.OODSection, or None
    scaling: list = field(default_factory=list)    # eval.report_scaling.ScalingSection


# --- formatting ----------------------------------------------------------------------------------
def fmt(value) -> str:
    """Four significant digits; whole thousands without exponent."""
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    v = float(value)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def label(key: str) -> str:
    """fid_domain -> "FID (domain)"; bpd_test -> "bits/dim"."""
    m = FIDELITY_RE.match(key)
    return f"{LABELS[m['metric']]} ({m['ext']})" if m else LABELS.get(key, key)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


# --- metric names --------------------------------------------------------------------------------
def kind(run) -> str:
    return run.data.tags.get(KIND_TAG, "")


CI_SUFFIXES = ("_ci_low", "_ci_high")   # eval --bootstrap: fid_domain_ci_low, ...


def eval_metric(key: str) -> bool:
    key = key.removesuffix(CI_SUFFIXES[0]).removesuffix(CI_SUFFIXES[1])
    return bool(FIDELITY_RE.match(strip_std(key))) or key.endswith("_test") or \
        key.startswith("probe_")


def strip_std(key: str) -> str:
    """fid_domain_std / is_std_domain -> the key it is the spread of."""
    return key.replace("_std", "") if "_std" in key else key


def std_of(metrics: dict, key: str) -> float | None:
    metric, _, ext = key.partition("_")
    for k in (f"{key}_std", f"{metric}_std_{ext}"):
        if k in metrics:
            return metrics[k]
    return None

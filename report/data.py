"""What a report holds: its rows, cells, columns, sweeps and images (dataclasses), the labels
of the metrics it knows, and how numbers are written. collect.py fills it from MLflow, tables.py
builds the tables, sweeps.py reads the sweeps; metric keys and tag names are pipeline/schema.py's.

Driven by what MLflow holds and by the metric registry (eval/metrics/), never by metric names
spelled here: a logged key that a registered metric claims becomes a column with that metric's
label, direction and stamps (sample-quality keys `<metric>_<extractor>` one column per extractor
and protocol), `floor_<metric>` goes to the floor table, and stamps under the protocol prefixes
to the protocol table; a metric registered later shows up without changes here. Each number is
read with the stamps of the evaluation record that made it (report/records.py).
Anything that is missing (a family never trained, a failed run, no eval, no sweep) is recorded
as a sentence for the report to show, never an exception.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from eval import metrics as registry
from pipeline import schema
from report.records import base_key

# The order of the sample-quality columns: KID beside FID, since FID is biased by n and KID is
# not, so the pair shows how much of a gap is bias.
FIDELITY = schema.FIDELITY
IMAGE_DIRS = ("samples", "reconstructions")  # first one a run has is its grid


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
    record: str = ""           # the evaluation record the number came from (its MLflow run)


@dataclass
class Column:
    key: str                          # the MLflow metric or param behind it
    label: str
    group: str
    id: str = ""                      # unique among the table's columns (default: key)
    protocol: tuple | None = None     # sample-quality columns: every value in it has this one
    direction: str = ""               # "lower" / "higher" is better (the header's arrow)

    def __post_init__(self):
        self.id = self.id or self.key

    @property
    def arrow(self) -> str:
        return registry.ARROWS.get(self.direction, "")


@dataclass
class SeedRun:
    """One finished run of a row: rows with several seeds show mean ± std over these."""
    seed: str
    run_id: str
    metrics: dict
    params: dict
    tags: dict
    sources: dict = field(default_factory=dict)    # metric key -> records.Source

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
    sources: dict = field(default_factory=dict)    # metric key -> records.Source


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
    ood: object = None                          # report.ood.OODSection, or None
    scaling: list = field(default_factory=list)    # report.scaling.ScalingSection
    significance: list = field(default_factory=list)  # significance_section.SignificanceTable
    sanity: list = field(default_factory=list)     # report.sanity.Panel
    sanity_failures: list = field(default_factory=list)  # one sentence per failed expectation
    memorization: list = field(default_factory=list)  # memorization_section.MemorizationEntry
    conditional: list = field(default_factory=list)   # conditional_section.ConditionalEntry
    agreement: list = field(default_factory=list)     # extractor_agreement.Agreement


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
    """fid_domain -> "FID (domain)"; bpd_test -> "bits/dim": the registered metric's label."""
    return registry.label(key)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


# --- metric names --------------------------------------------------------------------------------
def kind(run) -> str:
    return schema.kind(run.data.tags)


def eval_metric(key: str) -> bool:
    """A key of the results table: one a registered metric logs (spreads and intervals too)."""
    return registry.main_table_key(base_key(strip_std(key)))


def strip_std(key: str) -> str:
    """fid_domain_std / is_std_domain (older runs) -> the key it is the spread of."""
    return key.replace(schema.STD, "") if schema.STD in key else key


def std_of(metrics: dict, key: str) -> float | None:
    metric, _, ext = key.partition("_")
    for k in (schema.std_key(key), f"{metric}{schema.STD}_{ext}"):
        if k in metrics:
            return metrics[k]
    return None

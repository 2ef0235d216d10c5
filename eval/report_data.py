"""What a report shows, read from an experiment's MLflow runs (through pipeline.tracking).

Driven by what MLflow holds rather than by fixed lists: a metric named `<fid|is|kid|precision|
recall>_<extractor>` becomes a column under that extractor, `floor_<metric>` goes to the floor
table, `*_test` and `probe_*` to the likelihood/encoder columns, and params or tags under the
protocol prefixes to the protocol table; names added later show up without changes here.
Anything that is missing (a family never trained, a failed run, no eval, no sweep) is recorded
as a sentence for the report to show, never an exception.
"""
from __future__ import annotations

import csv
import io
import math
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from eval import references
from eval.plots import training_curves_png
from pipeline import tracking

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


# --- reading MLflow ------------------------------------------------------------------------------
def kind(run) -> str:
    return run.data.tags.get(KIND_TAG, "")


def collect(experiment: str, uri: str | None = None, families: tuple[str, ...] | None = None,
            with_images: bool = True) -> ReportData | None:
    """Everything the report shows; None when the experiment does not exist."""
    from pipeline.models import FAMILIES

    uri = uri or tracking.tracking_uri()
    exp_id = tracking.find_experiment(experiment, uri)
    if exp_id is None:
        return None
    runs = tracking.search_runs(exp_id, uri=uri)
    families = families or tuple(FAMILIES)
    missing: list[str] = []
    train = [r for r in runs if kind(r) == "train"]
    # `genbench eval --checkpoint` on a run from another store logs into its own eval run: use
    # those only for families without a training run here.
    trained = {r.data.tags.get("genbench.model") for r in train}
    train += [r for r in runs if kind(r) == "eval" and r.data.tags.get("genbench.model")
              not in trained]
    # `genbench eval --samples DIR`: anyone's samples, one row per name (external:<name>)
    train += [r for r in runs if kind(r) == EXTERNAL]
    rows = []
    for fam in families + tuple(sorted({r.data.tags.get("genbench.model", "?") for r in train}
                                       - set(families))):
        fam_runs = [r for r in train if r.data.tags.get("genbench.model") == fam]
        # runs for the OOD section (conditional, or without some classes) stay out of the main
        # table unless a family has no other run
        fam_runs = [r for r in fam_runs if not ood_variant(r)] or fam_runs
        if not fam_runs:
            if fam in families:
                missing.append(f"{fam}: no training run in this experiment "
                               f"(`genbench train --model {fam} --experiment {experiment}`)")
            continue
        rows.append(family_row(fam, fam_runs, experiment, uri, with_images))
    columns = discover_columns(rows)
    fill_cells(rows, columns)
    seed_rows = seed_table(rows, columns)
    for row in rows:
        if row.notes:
            missing.append(f"{row.family} (run {row.run_id}): " + "; ".join(row.notes))
    datasets = sorted({r.dataset for r in rows})
    if len(datasets) > 1:
        missing.append(f"runs span several datasets ({', '.join(datasets)}); their numbers are "
                       f"not comparable across datasets")
    floor_columns, floor_rows = floor_table(rows)
    if rows and not floor_rows:
        missing.append("no floor (real vs real) metrics yet: `genbench eval` logs them as "
                       "floor_<metric>")
    sweeps = [sweep(r, uri, with_images) for r in runs if kind(r) == "tune"]
    if not sweeps:
        missing.append(f"no sweep in this experiment, so no rate-distortion plot or best config "
                       f"(`genbench tune --experiment {experiment}`)")
    for s in sweeps:
        if not s.rows:
            missing.append(f"sweep {s.name} ({s.family}, {s.status}) has no results yet")
    reference_note = ""
    if any(eval_metric(k) for r in rows for k in r.metrics) and not any(r.refs for r in rows):
        reference_note = ("No published number is shown: none was measured under this "
                          "protocol (same dataset and split; for FID/IS/KID/PR, Inception "
                          "features and the same n).")
    from eval.report_ood import collect_ood
    from eval.report_scaling import collect_scaling
    ood = collect_ood([r for r in runs if kind(r) in ("train", "eval")],
                      [row.family for row in rows], uri, with_images)
    scaling = collect_scaling(runs, uri, with_images)
    return ReportData(reference_note=reference_note, seed_rows=seed_rows, ood=ood,
        scaling=scaling,
        experiment=experiment, experiment_id=exp_id, tracking_uri=uri,
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), datasets=datasets, columns=columns,
        rows=rows, floor_columns=floor_columns, floor_rows=floor_rows,
        protocol=by_family(rows, lambda row: {k: v for k, v in {**row.params, **row.tags}.items()
                                              if k.startswith(PROTOCOL_PREFIXES)
                                              and not k.startswith(OOD_PREFIXES)}),
        versions=by_family(rows, lambda row: {k: row.tags[k] for k in VERSION_TAGS
                                              if k in row.tags}),
        sweeps=sweeps, runs=[run_summary(r) for r in runs if kind(r) != "report"],
        missing=missing)


def ood_variant(run) -> bool:
    """A conditional run or one trained without some classes (data.exclude_classes)."""
    p = run.data.params
    return (p.get("train.conditional", "False").lower() == "true"
            or p.get("data.exclude_classes", "[]") not in ("[]", "()", ""))


def run_summary(run) -> dict:
    info = run.info
    return {"run_id": info.run_id, "name": info.run_name or "", "kind": kind(run) or "other",
            "model": run.data.tags.get("genbench.model", ""), "status": info.status,
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(info.start_time / 1000))}


def pick_run(runs: list):
    """The newest finished run, else the newest of any status (runs come newest first)."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return finished[0] if finished else runs[0]


SEED_PARAM = "train.seed"


def config_key(run) -> tuple:
    """A run's config apart from its seed: runs with the same key are seeds of one setting."""
    return tuple(sorted((k, v) for k, v in run.data.params.items() if k != SEED_PARAM))


def seed_group(pick, runs: list) -> list:
    """The finished runs of pick's config, newest per seed (pick first); [pick] when it did not
    finish (its numbers are from where it stopped)."""
    if pick.info.status != "FINISHED":
        return [pick]
    group, seen = [], set()
    for r in [pick] + [r for r in runs if r is not pick]:
        seed = r.data.params.get(SEED_PARAM, "")
        if r.info.status == "FINISHED" and config_key(r) == config_key(pick) and seed not in seen:
            seen.add(seed)
            group.append(r)
    return group


def family_row(fam: str, runs: list, experiment: str, uri: str, with_images: bool) -> FamilyRow:
    run = pick_run(runs)
    rid = run.info.run_id
    row = FamilyRow(fam, rid, run.info.run_name or "", run.info.status,
                    run.data.tags.get("genbench.dataset", run.data.params.get("data.dataset", "?")),
                    dict(run.data.metrics), dict(run.data.params), dict(run.data.tags),
                    external=kind(run) == EXTERNAL)
    group = seed_group(run, runs)
    row.seeds = [SeedRun(r.data.params.get(SEED_PARAM, "?"), r.info.run_id, dict(r.data.metrics),
                         dict(r.data.params), dict(r.data.tags)) for r in group]
    newer = [r for r in runs if r.info.start_time > run.info.start_time]
    for r in newer:
        row.notes.append(f"a newer run {r.info.run_id} is {r.info.status}, so the table shows "
                         f"this last finished one")
    others = [r for r in runs if r not in group and r not in newer
              and r.info.status == "FINISHED"]
    if others:
        row.notes.append(f"{len(others)} older finished run(s) with another config are not in "
                         f"the table")
    if run.info.status != "FINISHED":
        row.notes.append(f"{run.info.status}, no finished run; its numbers are from where it "
                         f"stopped")
    if not any(eval_metric(k) for k in row.metrics):
        row.notes.append(f"no eval metrics yet (`genbench eval --run-id {rid}`)")
    hist = {k: tracking.metric_history(rid, k, uri) for k in row.metrics
            if not eval_metric(k) and not k.startswith(NOT_TRAINING)}
    ips = [v for _, v in hist.get("images_per_s", [])]
    row.derived["images_per_s_median"] = statistics.median(ips) if ips else None
    start, end = run.info.start_time, run.info.end_time
    row.derived["wall_seconds"] = (end - start) / 1000 if end and start else None
    if with_images:
        row.grid = latest_grid(rid, fam, uri)
        if row.grid is None:
            row.notes.append("no sample grid logged")
        declared = curve_panels(fam)
        png = training_curves_png(f"{fam} ({rid[:8]})", hist, declared)
        notes = "; ".join(p["note"] for p in declared.values() if p.get("note"))
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", fam)   # external:<name> -> a file name
        row.curves = (Image(f"curves_{safe}.png", png, f"{fam}: training curves"
                            + (f": {notes}" if notes else "")) if png else None)
        if row.curves is None and not row.external:
            row.notes.append("no training curves logged")
    return row


def curve_panels(fam: str) -> dict:
    """The panels the family declares for its training curves (none for an unknown family)."""
    from pipeline.models import FAMILIES
    return getattr(FAMILIES[fam], "CURVE_PANELS", {}) if fam in FAMILIES else {}


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


def latest_grid(run_id: str, fam: str, uri: str) -> Image | None:
    for folder in IMAGE_DIRS:
        pngs = sorted(p for p in tracking.list_artifacts(run_id, folder, uri)
                      if p.endswith(".png"))
        if pngs:
            with tempfile.TemporaryDirectory() as tmp:
                data = tracking.download_artifact(run_id, pngs[-1], tmp, uri).read_bytes()
            step = re.search(r"(\d+)", Path(pngs[-1]).stem)
            what = "reconstructions (odd rows: input, even rows: output)" \
                if folder == "reconstructions" else "samples"
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", fam)   # external:<name> -> a file name
            return Image(f"{folder}_{safe}.png", data,
                         f"{fam}: {what}" + (f" at step {int(step.group(1))}" if step else ""))
    return None


# --- the table -----------------------------------------------------------------------------------
PROTOCOL_FIELDS = ("n_fake", "n_real", "reference_split", "weights_sha256")


def fidelity_protocol(stamps: dict, metric: str) -> tuple:
    """(n_fake, n_real, reference split, extractor weights) a sample-quality metric was measured
    under, from eval's eval.<extractor>.* stamps; None where a run did not record one."""
    ext = references.extractor_of(metric)
    return tuple(stamps.get(f"eval.{ext}.{name}") for name in PROTOCOL_FIELDS)


def describe_protocol(ext: str, protocol: tuple, with_weights: bool = False) -> str:
    """'domain features: 2000 generated vs 2000 test images'."""
    n_fake, n_real, split, sha = protocol
    if n_fake is None and n_real is None:
        text = f"{ext} features: n not recorded"
    else:
        text = (f"{ext} features: {n_fake or '?'} generated vs {n_real or '?'} "
                f"{split or '?'} images")
    return text + (f", weights {str(sha)[:8]}" if with_weights and sha else "")


def discover_columns(rows: list[FamilyRow]) -> list[Column]:
    """Likelihood/encoder columns, then sample-quality columns grouped by extractor and protocol:
    every value in a column was measured with the same n_fake, n_real, reference split and
    extractor weights. A family measured under another protocol gets its own column group, named
    with its n, never a place in the same column."""
    keys = {k for row in rows for s in row.seeds or [row] for k in s.metrics
            if eval_metric(k) and "_std" not in k and not k.endswith(CI_SUFFIXES)}
    likelihood = sorted((k for k in keys if not FIDELITY_RE.match(k)),
                        key=lambda k: (LIKELIHOOD_ORDER.index(k) if k in LIKELIHOOD_ORDER
                                       else len(LIKELIHOOD_ORDER), k))
    cols = [Column(k, LABELS.get(k, k), "likelihood & encoder") for k in likelihood]
    if "bpd_test" not in likelihood:  # always show the (8-bit) bits/dim column
        cols.insert(0, Column("bpd_test", "bits/dim", "likelihood & encoder"))
    protocols: dict[str, dict[tuple, set]] = {}   # ext -> protocol -> metrics measured so
    for row in rows:
        for run in row.seeds or [row]:
            for k in run.metrics:
                m = FIDELITY_RE.match(k)  # (fid_domain_ci_low does not match: not a column)
                if m and "_std" not in k:
                    stamps = {**run.params, **run.tags}
                    protocols.setdefault(m["ext"], {}).setdefault(
                        fidelity_protocol(stamps, k), set()).add(m["metric"])
    for ext in sorted(protocols, key=lambda e: (e != "inception", e)):
        by_protocol = protocols[ext]
        several = len(by_protocol) > 1
        shas = {p[3] for p in by_protocol}
        # larger n first: the column a paper would report
        for p in sorted(by_protocol, key=lambda p: tuple(-int(x) if str(x).isdigit() else 0
                                                         for x in p[:2])):
            group = describe_protocol(ext, p, with_weights=len(shas) > 1)
            for metric in FIDELITY:
                if metric in by_protocol[p]:
                    key = f"{metric}_{ext}"
                    col_id = f"{key}@{'-'.join(str(x)[:8] for x in p)}" if several else key
                    cols.append(Column(key, LABELS[metric], group, col_id, p))
    cols += [Column("train.total_steps", "steps", "training"),
             Column("wall_seconds", "wall time", "training"),
             Column("images_per_s_median", "images/s", "training"),
             Column("train.workers", "workers", "training"),
             Column("hardware", "hardware", "training")]
    return cols


def applicable(fam: str, key: str) -> bool:
    """Whether a family can have this metric at all (GAN bits/dim: no, and never zero)."""
    from pipeline.models import FAMILIES, can

    module = FAMILIES.get(fam)
    if module is None:
        return True
    if key.startswith(("bpd", "nll")):
        return can(module, "nll")
    if key.startswith("probe"):
        return can(module, "encode")
    if key.startswith(("mse", "psnr")):  # eval's stand-in for a likelihood, where none exists
        return can(module, "reconstruct") and not can(module, "nll")
    if FIDELITY_RE.match(key):
        return can(module, "sample")
    return True


OTHER_PROTOCOL = "measured under another protocol: see its own column"


def fill_cells(rows: list[FamilyRow], columns: list[Column]) -> None:
    for row in rows:
        for col in columns:
            row.cells[col.id] = cell(row, col)
        unmeasured = [label(c.key) for c in columns if c.group != "training"
                      and row.cells[c.id].text == "—" and row.cells[c.id].note != OTHER_PROTOCOL]
        if unmeasured and any(eval_metric(k) for k in row.metrics):  # else "no eval yet" says it
            row.notes.append(f"not measured yet: {', '.join(dict.fromkeys(unmeasured))}")
        for col in columns:
            if col.group == "training" or row.cells[col.id].value is None:
                continue
            n_fake, n_real, split, _ = col.protocol or (None, None, None, None)
            for ref in references.matching(row.family, row.dataset, col.key, as_int(n_fake),
                                           as_int(n_real), reference_split=split,
                                           params=row.params):
                row.refs.append((col.id, ref))


def as_int(text) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def measured(runs: list, col: Column) -> list:
    """The runs that have this column's metric under this column's protocol."""
    return [r for r in runs if r.metrics.get(col.key) is not None and (
        col.protocol is None or fidelity_protocol({**r.params, **r.tags}, col.key) == col.protocol)]


def stamp_of(run, key: str) -> str:
    """eval's own description of how a metric was measured, e.g. eval.bpd = 'IWAE bound, k=16'."""
    parts = [run.tags.get(f"eval.{key.split('_')[0]}", "")]
    if key.startswith("bpd"):
        parts.append(run.tags.get("eval.bpd.data", ""))
    return "; ".join(p for p in parts if p)


def metric_cell(runs: list, key: str, col: Column) -> Cell:
    """One run: its value (± its own spread over IS splits / KID subsets). Several seeds: mean ±
    sample std over the seeds, each seed's value in the note (and the seeds table)."""
    values = [r.metrics[key] for r in runs]
    if len(runs) == 1:
        m = runs[0].metrics
        std = std_of(m, key)
        text = fmt(values[0]) + (f" ± {std:.2g}" if std is not None else "")
        low, high = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
        if low is not None and high is not None:  # eval --bootstrap
            text += f" [{fmt(low)}, {fmt(high)}]"
        return Cell(text, key, values[0], "; ".join(x for x in (
            stamp_of(runs[0], key), runs[0].tags.get(
                f"eval.{references.extractor_of(key)}.bootstrap", "")) if x))
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    each = "; ".join(f"seed {r.seed}: {fmt(v)}" for r, v in zip(runs, values))
    return Cell(f"{fmt(mean)} ± {sd:.2g} ({len(runs)} seeds)", key, mean,
                f"mean ± sample std over {len(runs)} seeds ({each}); {stamp_of(runs[0], key)}")


def cell(row: FamilyRow, col: Column) -> Cell:
    key = col.key
    if key == "hardware":
        t = row.tags
        text = t.get("hardware.gpu") or " ".join(x for x in (
            t.get("hardware.cpu", ""), f"{t['hardware.cpus']} CPUs" if "hardware.cpus" in t
            else "") if x) or "—"
        return Cell(text, key)
    if key in row.params:
        return Cell(row.params[key], key)
    if key == "wall_seconds":
        v = row.derived.get(key)
        return Cell(fmt_seconds(v), key, v, "run start to end, Ray start-up included")
    if key == "images_per_s_median":
        v = row.derived.get(key)
        return Cell(fmt(v), key, v, "median over the run's log intervals")
    if col.group != "training" and not applicable(row.family, key):
        return Cell("n/a", key, None, f"not applicable to {row.family}")
    if row.external and col.group != "training" and not FIDELITY_RE.match(key):
        return Cell("n/a", key, None, "a folder of samples has only sample-quality metrics")
    runs = measured(row.seeds or [row], col)
    if not runs:
        elsewhere = any(key in r.metrics for r in row.seeds or [row])
        return Cell("—", key, None, OTHER_PROTOCOL if elsewhere else "not measured yet")
    return metric_cell(runs, key, col)


def seed_table(rows: list[FamilyRow], columns: list[Column]) -> list:
    """(family, SeedRun, {column id: Cell}) for every seed of the rows with several seeds."""
    out = []
    metric_cols = [c for c in columns if c.group != "training"]
    for row in rows:
        if len(row.seeds) < 2:
            continue
        for run in row.seeds:
            cells = {}
            for col in metric_cols:
                if not applicable(row.family, col.key):
                    cells[col.id] = Cell("n/a", col.key)
                elif measured([run], col):
                    cells[col.id] = metric_cell([run], col.key, col)
                else:
                    cells[col.id] = Cell("—", col.key)
            out.append((row.family, run, cells))
    return out


def floor_table(rows: list[FamilyRow]) -> tuple[list[str], list[tuple[str, dict]]]:
    """Real-vs-real metrics; one row per distinct set of values, labelled with the protocol it
    was measured under (the floor moves with n as the models' numbers do)."""
    keys = sorted({k for r in rows for k in r.metrics if k.startswith("floor_")
                   and "_std" not in k and r.metrics[k] is not None})
    if not keys:
        return [], []
    per_run = [(r, {k: Cell(fmt(r.metrics[k]), k, r.metrics[k])
                    for k in keys if k in r.metrics}) for r in rows
               if any(k in r.metrics for k in keys)]
    distinct: dict[tuple, tuple[list, dict]] = {}
    for r, cells in per_run:
        values = tuple((k, c.value) for k, c in cells.items())
        distinct.setdefault(values, ([], cells))[0].append(r)
    out = []
    for fams, cells in distinct.values():
        first = fams[0]
        stamps = {**first.params, **first.tags}
        protocols = []
        for ext in dict.fromkeys(references.extractor_of(k[6:]) for k in cells):
            n_real, split = (stamps.get(f"eval.{ext}.{x}") for x in ("n_real", "reference_split"))
            floor = stamps.get(f"eval.{ext}.floor", "train images")
            protocols.append(f"{ext}: {floor}, {n_real or '?'} {split or 'test'} images")
        text = "real train vs real test (" + "; ".join(protocols) + ")"
        if len(distinct) > 1:
            text += f", as logged in the {', '.join(r.family for r in fams)} run(s)"
        out.append((text, cells))
    return keys, out


def by_family(rows: list[FamilyRow], pick) -> list[tuple[str, dict]]:
    table: dict[str, dict] = {}
    for row in rows:
        for k, v in pick(row).items():
            table.setdefault(k, {})[row.family] = v
    return sorted(table.items())


# --- sweeps --------------------------------------------------------------------------------------
def sweep(run, uri: str, with_images: bool) -> Sweep:
    rid = run.info.run_id
    p = run.data.params
    metric, mode = p.get("tune.metric", "?"), p.get("tune.mode", "min")
    best = run.data.metrics.get(f"best_{metric}")
    files = set(tracking.list_artifacts(rid, None, uri))
    header, rows, best_config, swept, plots = [], [], "", {}, []
    with tempfile.TemporaryDirectory() as tmp:
        if "results.csv" in files:
            text = tracking.download_artifact(rid, "results.csv", tmp, uri).read_text()
            table = list(csv.reader(io.StringIO(text)))
            header, rows = table[0], table[1:]
            rows = sort_results(header, rows, metric, mode)
        if "best_config.yaml" in files:
            best_config = tracking.download_artifact(rid, "best_config.yaml", tmp, uri).read_text()
        if with_images:
            pngs = sorted(tracking.list_artifacts(rid, "plots", uri),
                          key=lambda n: ("rate_distortion" not in n, n))
            for name in (n for n in pngs if n.endswith(".png")):
                data = tracking.download_artifact(rid, name, tmp, uri).read_bytes()
                stem = Path(name).stem
                caption = ("rate-distortion across beta" if stem == "rate_distortion"
                           else stem.replace("_vs_", " vs "))
                plots.append(Image(f"sweep_{rid[:8]}_{stem}.png", data, caption))
    keys = [k for k in header if "." in k]  # swept hyperparameters are dotted config keys
    best_trial = run.data.tags.get("genbench.best_trial", "")
    if rows and keys and metric in header:
        top = rows[0]
        swept = {k: top[header.index(k)] for k in keys}
        best_trial = best_trial or top[0]
    return Sweep(rid, run.info.run_name or rid[:8], run.data.tags.get("genbench.model", "?"),
                 run.info.status, metric, mode, best, best_trial, swept, best_config, header,
                 rows, len(rows), plots)


def sort_results(header: list[str], rows: list[list[str]], metric: str, mode: str):
    if metric not in header:
        return rows
    i = header.index(metric)

    def score(row):
        try:
            v = float(row[i])
        except (ValueError, IndexError):
            return math.inf
        if not math.isfinite(v) or (len(row) > 2 and row[2] == "failed"):
            return math.inf
        return v if mode == "min" else -v

    return sorted(rows, key=score)

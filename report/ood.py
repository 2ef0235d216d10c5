"""The report's "Can it reject the unseen?" section, read from the runs' ood_* and bayes_* metrics.

Per family it uses up to three kinds of training run in the experiment:
    main         the newest finished run on all classes (unconditional where there is one):
                 every OOD set but the unseen class
    unseen       a run trained with data.exclude_classes: the unseen-class column
    conditional  a conditional run: the Bayes classifier, and p(x) = sum_y p(x|y) p(y) as a score
The classifier row (max softmax probability) comes from the first run that logged it (main runs
for the usual sets, an unseen-class run for its column: that classifier never saw the class).
Every sentence is computed from the numbers, so it says what they show, failures included.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

from eval.ood.scores import LABELS as SCORE_LABELS
from eval.ood.sets import SETS
from pipeline import schema, tracking
from report.data import Cell, Image, fmt
from report.records import source_of, stamps_of

SET_LABELS = {"unseen": "unseen class", "digits": "digits (sklearn)", "mnist": "MNIST",
              "noise": "noise", "constant": "constant", "flipped": "flipped", "inverted":
              "inverted"}
SCORE_ORDER = ("bpd", "ratio", "complexity", "recon", "neglogd", "msp")
GOOD, BAD = 0.9, 0.5


@dataclass
class OODRow:
    label: str
    family: str
    score: str
    cells: dict[str, Cell]       # set -> AUROC cell
    sentence: str
    runs: str                    # which runs the numbers come from


@dataclass
class BayesRow:
    label: str
    cells: dict[str, Cell]       # accuracy, nll, ece
    sentence: str
    run_id: str


@dataclass
class OODSection:
    sets: list[str]
    rows: list[OODRow]
    bayes: list[BayesRow]
    images: list[Image]
    notes: list[str] = field(default_factory=list)
    set_labels: dict = field(default_factory=lambda: dict(SET_LABELS))


def excluded(run) -> bool:
    return schema.excludes_classes(run.data.params)


def conditional(run) -> bool:
    return schema.is_conditional(run.data.params)


def has(run, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in run.data.metrics)


def newest(runs: list):
    """The newest finished run, else the newest (runs come newest first); None if none."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return (finished or runs or [None])[0]


def aurocs(run) -> dict[tuple[str, str], float]:
    """{(score, set): AUROC} of a run."""
    out = {}
    for key, value in run.data.metrics.items():
        parsed = schema.parse_ood_key(key)
        if parsed and parsed[0] == "auroc":
            out[(parsed[2], parsed[1])] = value
    return out


def stamp_note(run, score: str, name: str) -> tuple[str, str]:
    """How one AUROC was measured, from the stamps of the evaluation that logged it, and that
    evaluation's record id ("" for a number no record holds)."""
    key = schema.ood_key("auroc", name, score)
    stamps = stamps_of(run, key)
    parts = [f"{what}: {stamps[k]}" for k, what in schema.OOD_STAMPS.items() if k in stamps]
    source = source_of(run, key)
    return "; ".join(parts + [f"evaluation {source.record_id[:8]}" if source else
                              f"run {run.info.run_id[:8]}"]), source.record_id if source else ""


def sentence(score: str, values: dict[str, float], raw: dict[str, float] | None = None) -> str:
    """What a row of AUROCs shows, in one sentence. raw: the same family's raw bits/dim row, to
    say whether a corrected score fixes a failure of the raw likelihood."""
    if not values:
        return "Not measured."
    good = [SET_LABELS.get(s, s) for s, v in values.items() if v >= GOOD]
    bad = [SET_LABELS.get(s, s) for s, v in values.items() if v < BAD]
    parts = []
    if good:
        parts.append(f"rejects {', '.join(good)} (AUROC >= {GOOD})")
    if bad:
        why = ("it assigns them a higher likelihood than the test images, as Nalisnick et al. "
               "(2019) found" if score == "bpd" else "it scores them as more typical than the "
                                                     "test images")
        parts.append(f"fails on {', '.join(bad)} (AUROC < {BAD}: {why})")
    middle = [SET_LABELS.get(s, s) for s, v in values.items() if BAD <= v < GOOD]
    if middle:
        parts.append(f"only partly separates {', '.join(middle)}")
    if raw and score in ("ratio", "complexity"):
        fixed = [SET_LABELS.get(s, s) for s, v in values.items() if raw.get(s, 1) < BAD <= v]
        broken = [SET_LABELS.get(s, s) for s, v in values.items() if v < BAD <= raw.get(s, 0)]
        if fixed:
            parts.append(f"fixes raw bits/dim's failure on {', '.join(fixed)}")
        if broken:
            parts.append(f"but fails where raw bits/dim did not ({', '.join(broken)})")
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def collect_ood(train_runs: list, families: list[str], uri: str,
                with_images: bool = True) -> OODSection | None:
    """The section from every training run of the experiment; None when no run has OOD or Bayes
    metrics."""
    if not any(has(r, schema.OOD_PREFIX) or has(r, schema.BAYES + "_") for r in train_runs):
        return None
    rows: list[OODRow] = []
    images: list[Image] = []
    notes: list[str] = []
    seen_sets: set[str] = set()
    classifier: dict[str, tuple[float, str]] = {}
    for fam in families:
        fam_runs = [r for r in train_runs if r.data.tags.get(schema.MODEL) == fam
                    and has(r, schema.OOD_PREFIX)]
        plain = [r for r in fam_runs if not excluded(r)]
        main = newest([r for r in plain if not conditional(r)] or plain)
        unseen = newest([r for r in fam_runs if excluded(r)])
        cond = newest([r for r in plain if conditional(r) and r is not main])
        per: dict[str, dict[str, float]] = {}
        stamp_notes: dict[tuple[str, str], tuple] = {}  # (score, set) -> (stamps, record id)
        sources = []
        for run, sets in ((main, None), (unseen, {"unseen"})):
            if run is None:
                continue
            sources.append(run.info.run_id[:8])
            for (score, name), v in aurocs(run).items():
                if sets is not None and name not in sets:
                    continue
                if score == "msp":
                    classifier.setdefault(name, (v, run.info.run_id[:8],
                                                 stamp_note(run, score, name)))
                    continue
                per.setdefault(score, {})[name] = v
                stamp_notes[(score, name)] = stamp_note(run, score, name)
            if with_images:
                image = histogram_image(run, fam + ("_unseen" if sets else ""), uri)
                if image:
                    images.append(image)
        if cond is not None:
            values = {n: v for (s, n), v in aurocs(cond).items() if s == "bpd"}
            stamp_notes.update({("px", n): stamp_note(cond, "bpd", n) for n in values})
            if values:
                per["px"] = values
                sources.append(cond.info.run_id[:8])
        raw = per.get("bpd")
        for score in [s for s in SCORE_ORDER if s in per] + (["px"] if "px" in per else []):
            label = (f"{fam} · p(x) = Σ_y p(x|y) p(y)" if score == "px"
                     else f"{fam} · {SCORE_LABELS[score]}")
            values = per[score]
            seen_sets.update(values)
            rows.append(OODRow(label, fam, score, auroc_cells(values, {
                n: stamp_notes.get((score, n), ("", "")) for n in values}), sentence(
                "bpd" if score == "px" else score, values, raw), ", ".join(sources)))
    if classifier:
        values = {n: v for n, (v, _, _) in classifier.items()}
        seen_sets.update(values)
        label = "domain classifier · max softmax"
        rows.append(OODRow(label, "classifier", "msp", auroc_cells(
            values, {n: note for n, (_, _, note) in classifier.items()}),
                           sentence("msp", values),
                           ", ".join(sorted({r for _, r, _ in classifier.values()}))))
    sets = [s for s in SETS if s in seen_sets] + sorted(seen_sets - set(SETS))  # + folders
    for row in rows:
        for s in sets:
            row.cells.setdefault(s, Cell("—", "", None, "not measured"))
    notes += protocol_notes(train_runs)
    labels = {s: SET_LABELS.get(s, f"folder {s}") for s in sets}   # a folder set: its name
    return OODSection(sets, rows, bayes_rows(train_runs, families), images, notes, labels)


def auroc_cells(values: dict[str, float], stamps: dict[str, tuple] | None = None
                ) -> dict[str, Cell]:
    """{set: Cell}, keyed ood_auroc_<set> (the row names the score); the note says what the
    value shows and, from stamps ({set: (note, record id)}), how its evaluation measured it."""
    stamps = stamps or {}
    return {s: Cell(f"{v:.3f}", f"{schema.OOD_PREFIX}auroc_{s}", v, "; ".join(x for x in (
        "rejects" if v >= GOOD else ("worse than chance" if v < BAD else "partly"),
        stamps.get(s, ("", ""))[0]) if x), stamps.get(s, ("", ""))[1])
        for s, v in values.items()}


def histogram_image(run, name: str, uri: str) -> Image | None:
    """The histograms of the newest evaluation that logged the run's OOD numbers."""
    keys = [k for k in run.data.metrics if k.startswith(schema.OOD_PREFIX)]
    path = stamps_of(run, keys[0]).get(schema.figure_tag("ood")) if keys else None
    if not path:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = tracking.download_artifact(run.info.run_id, path, tmp, uri).read_bytes()
    except Exception:  # a missing artifact: the section says so instead
        return None
    return Image(f"ood_{name}.png", data, f"{name.replace('_', ' ')} (run "
                 f"{run.info.run_id[:8]}): OOD scores, in-distribution (blue) vs each OOD set "
                 f"(red)")


def protocol_notes(runs: list) -> list[str]:
    """The OOD stamps of the evaluations whose numbers the section shows (each AUROC's own
    are in its cell's note)."""
    out = []
    stamps = {}
    for r in runs:
        used = {}   # record id -> stamps, for the evaluations behind this run's OOD numbers
        for k in r.data.metrics:
            if k.startswith((schema.OOD_PREFIX, schema.BAYES + "_", schema.CLASSIFIER + "_")):
                source = source_of(r, k)
                used[source.record_id if source else ""] = stamps_of(r, k)
        for found in used.values():
            for key in schema.OOD_STAMPS:
                if key in found:
                    stamps.setdefault(key, set()).add(found[key])
            for key, value in found.items():
                if key.startswith(schema.ood_set_tag("")) and value.startswith("skipped"):
                    stamps.setdefault(key, set()).add(value)
    for key, values in sorted(stamps.items()):
        what = schema.OOD_STAMPS.get(key, f"set {key.rsplit('.', 1)[-1]}")
        out.append(f"{what}: {'; '.join(sorted(values))}")
    return out


def bayes_rows(runs: list, families: list[str]) -> list[BayesRow]:
    out: list[BayesRow] = []
    classifier = None
    for fam in families:
        run = newest([r for r in runs if r.data.tags.get(schema.MODEL) == fam
                      and has(r, schema.BAYES + "_")])
        if run is None:
            continue
        m = run.data.metrics
        bayes, disc = values(m, schema.BAYES), values(m, schema.CLASSIFIER)
        if classifier is None and disc["accuracy"] is not None:
            classifier = run
        acc, ref = bayes["accuracy"], disc["accuracy"]
        nan = float("nan")
        label = f"{fam} · Bayes' rule on p(x|y)"
        if acc is None:
            text = "No accuracy logged."
        elif ref is None:
            text = f"Accuracy {acc:.3f}, calibration error {bayes['ece'] or 0:.3f}."
        else:
            gap = (acc - ref) * 100
            text = (f"{abs(gap):.1f} points {'below' if gap < 0 else 'above'} the "
                    f"discriminative classifier on the same images; ECE "
                    f"{nan if bayes['ece'] is None else bayes['ece']:.3f} vs "
                    f"{nan if disc['ece'] is None else disc['ece']:.3f}.")
        out.append(BayesRow(label, metric_cells(m, schema.BAYES), text, run.info.run_id))
    if classifier is not None:
        m = classifier.data.metrics
        out.append(BayesRow("domain classifier · softmax", metric_cells(m, schema.CLASSIFIER),
                            "The discriminative reference, on the same test images.",
                            classifier.info.run_id))
    return out


def values(metrics: dict, who: str) -> dict[str, float | None]:
    """{accuracy, nll, ece} of the Bayes classifier (who=BAYES) or the domain classifier."""
    return {k: metrics.get(schema.classification_key(who, k))
            for k in schema.CLASSIFICATION_METRICS}


def metric_cells(metrics: dict, who: str) -> dict[str, Cell]:
    keys = {k: schema.classification_key(who, k) for k in schema.CLASSIFICATION_METRICS}
    return {k: Cell(fmt(metrics.get(key)), key, metrics.get(key)) for k, key in keys.items()}

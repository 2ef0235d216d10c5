"""Reading an experiment's MLflow runs into ReportData: one row per family (its newest
finished run and that config's other seeds), the sweeps, the OOD section, and a sentence for
whatever is missing, never an exception."""
from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path

from pipeline import schema, tracking
from report.data import IMAGE_DIRS, FamilyRow, Image, ReportData, SeedRun, eval_metric, kind
from report.plots import training_curves_png
from report.records import evaluated, records_by_parent
from report.sweeps import sweep
from report.tables import by_family, discover_columns, fill_cells, floor_table, seed_table


def collect(experiment: str, uri: str | None = None, families: tuple[str, ...] | None = None,
            with_images: bool = True) -> ReportData | None:
    """Everything the report shows; None when the experiment does not exist."""
    from pipeline.models import FAMILIES, is_built_in

    uri = uri or tracking.tracking_uri()
    exp_id = tracking.find_experiment(experiment, uri)
    if exp_id is None:
        return None
    runs = tracking.search_runs(exp_id, uri=uri)
    records = records_by_parent(runs)
    # each run as the report reads it: every number from the newest evaluation that made it,
    # with that evaluation's stamps (report/records.py)
    runs = [evaluated(r, records.get(r.info.run_id, [])) if kind(r) != schema.EVALUATION else r
            for r in runs]
    # the built-ins are expected (a missing one is said); an installed plug-in family gets a
    # row when it has a run (a test's toy family is installed beside `make run`'s bench)
    families = families or tuple(f for f in FAMILIES if is_built_in(f))
    missing: list[str] = []
    train = [r for r in runs if kind(r) == schema.TRAIN]
    # `genbench eval --checkpoint` on a run from another store logs into its own eval run: use
    # those only for families without a training run here.
    trained = {r.data.tags.get(schema.MODEL) for r in train}
    train += [r for r in runs if kind(r) == schema.EVAL and r.data.tags.get(schema.MODEL)
              not in trained]
    # `genbench eval --samples DIR`: anyone's samples, one row per name (external:<name>)
    train += [r for r in runs if kind(r) == schema.EXTERNAL]
    rows = []
    for fam in families + tuple(sorted({r.data.tags.get(schema.MODEL, "?") for r in train}
                                       - set(families))):
        fam_runs = [r for r in train if r.data.tags.get(schema.MODEL) == fam]
        # runs for the OOD section (conditional, or without some classes) stay out of the main
        # table unless a family has no other run
        fam_runs = [r for r in fam_runs if not schema.is_ood_variant(r.data.params)] or fam_runs
        if not fam_runs:
            if fam in families:
                missing.append(f"{fam}: no training run in this experiment "
                               f"(`genbench train --model {fam} --experiment {experiment}`)")
            continue
        rows.append(family_row(fam, fam_runs, experiment, uri, with_images))
    columns = discover_columns(rows)
    fill_cells(rows, columns)
    seed_rows = seed_table(rows, columns)
    from report.significance_section import significance_tables   # marks ranks in the cells
    significance = significance_tables(rows, columns, uri)
    for row in rows:
        if row.notes:
            missing.append(f"{row.family} (run {row.run_id}): " + "; ".join(row.notes))
    datasets = sorted({r.dataset for r in rows})
    if len(datasets) > 1:
        missing.append(f"runs span several datasets ({', '.join(datasets)}); their numbers are "
                       f"not comparable across datasets")
    floor_columns, floor_rows = floor_table(rows)
    from report.memorization_section import memorization_entries
    from report.sanity import sanity_failures, sanity_panels
    sanity = sanity_panels(rows)
    memorization = memorization_entries(rows, uri, with_images)
    from report.conditional_section import conditional_entries
    conditional = conditional_entries(runs)
    from report.extractor_agreement import agreements
    agreement = agreements(rows)
    for a in agreement:
        if a.flips:   # said at the top too: the ranking depends on the extractor
            missing.append(f"{a.metric.upper()} ranks {', '.join(f'{x}/{y}' for x, y in a.flips)} "
                           f"differently with {a.extractors[0]} and {a.extractors[1]} features")
    if rows and not floor_rows:
        missing.append("no floor (real vs real) metrics yet: `genbench eval` logs them as "
                       "floor_<metric>")
    sweeps = [sweep(r, uri, with_images) for r in runs if kind(r) == schema.TUNE]
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
    from report.ood import collect_ood
    from report.scaling import collect_scaling
    ood = collect_ood([r for r in runs if kind(r) in (schema.TRAIN, schema.EVAL)],
                      [row.family for row in rows], uri, with_images)
    scaling = collect_scaling(runs, uri, with_images)
    return ReportData(reference_note=reference_note, seed_rows=seed_rows, ood=ood,
        scaling=scaling, significance=significance,
        sanity=sanity, sanity_failures=sanity_failures(sanity), memorization=memorization,
        conditional=conditional, agreement=agreement,
        experiment=experiment, experiment_id=exp_id, tracking_uri=uri,
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), datasets=datasets, columns=columns,
        rows=rows, floor_columns=floor_columns, floor_rows=floor_rows,
        protocol=by_family(rows, protocol_stamps),
        versions=by_family(rows, lambda row: {k: row.tags[k] for k in schema.VERSION_TAGS
                                              if k in row.tags}),
        sweeps=sweeps, runs=[run_summary(r) for r in runs if kind(r) != schema.REPORT],
        missing=missing)


# what an evaluation computed, not how: the list of every metric name it logged, and --metrics
NOT_PROTOCOL = (schema.eval_tag("metrics"), schema.eval_tag("selected"))


def protocol_stamps(row: FamilyRow) -> dict:
    """The stamps of the evaluations behind the row's main-table numbers (its run's own params
    and tags for numbers no record holds). A stamp two evaluations set differently is shown
    with each evaluation's id, never as one value."""
    in_use: dict[str, dict] = {}      # record id ("" for the run itself) -> stamps
    for key in row.metrics:
        if eval_metric(key) or key.startswith(schema.FLOOR_PREFIX):
            source = row.sources.get(key)
            rid = source.record_id if source else ""
            if rid not in in_use:
                in_use[rid] = source.stamps if source else {**row.params, **row.tags}
    if not in_use:
        in_use[""] = {**row.params, **row.tags}
    values: dict[str, dict[str, str]] = {}   # stamp -> {value: record ids}
    for rid, stamps in in_use.items():
        for k, v in stamps.items():
            if k.startswith(schema.PROTOCOL_PREFIXES) and not k.startswith(
                    schema.OOD_TAG_PREFIXES) and k not in NOT_PROTOCOL:
                values.setdefault(k, {}).setdefault(v, []).append(rid)
    out = {}
    for k, by_value in values.items():
        if len(by_value) == 1:
            out[k] = next(iter(by_value))
        else:
            out[k] = " | ".join(f"{v} (evaluation {', '.join(r[:8] or 'tags' for r in rids)})"
                                for v, rids in by_value.items())
    return out


def run_summary(run) -> dict:
    info = run.info
    return {"run_id": info.run_id, "name": info.run_name or "", "kind": kind(run) or "other",
            "model": run.data.tags.get(schema.MODEL, ""), "status": info.status,
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(info.start_time / 1000))}


def pick_run(runs: list):
    """The newest finished run, else the newest of any status (runs come newest first)."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return finished[0] if finished else runs[0]


SEED_PARAM = schema.SEED_PARAM


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
                    run.data.tags.get(schema.DATASET, run.data.params.get("data.dataset", "?")),
                    dict(run.data.metrics), dict(run.data.params), dict(run.data.tags),
                    external=kind(run) == schema.EXTERNAL,
                    sources=dict(getattr(run, "sources", {})))
    group = seed_group(run, runs)
    row.seeds = [SeedRun(r.data.params.get(SEED_PARAM, "?"), r.info.run_id, dict(r.data.metrics),
                         dict(r.data.params), dict(r.data.tags),
                         dict(getattr(r, "sources", {}))) for r in group]
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
            if not eval_metric(k) and not k.startswith(schema.NOT_TRAINING)}
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



"""A sweep's parent run for the report: its results table (best first), best config, swept
values and plots, as `genbench tune` logged them."""
from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path

from pipeline import schema, tracking
from report.data import Image, Sweep


def sweep(run, uri: str, with_images: bool) -> Sweep:
    # lazy: tune.summary imports torch, which a report without sweeps never needs
    from tune.summary import BEST_CONFIG, PLOTS_DIR, RATE_DISTORTION, RESULTS_CSV

    rid = run.info.run_id
    p = run.data.params
    metric, mode = p.get("tune.metric", "?"), p.get("tune.mode", "min")
    best = run.data.metrics.get(f"best_{metric}")
    files = set(tracking.list_artifacts(rid, None, uri))
    header, rows, best_config, swept, plots = [], [], "", {}, []
    with tempfile.TemporaryDirectory() as tmp:
        if RESULTS_CSV in files:
            text = tracking.download_artifact(rid, RESULTS_CSV, tmp, uri).read_text()
            table = list(csv.reader(io.StringIO(text)))
            header, rows = table[0], table[1:]
            rows = sort_results(header, rows, metric, mode)
        if BEST_CONFIG in files:
            best_config = tracking.download_artifact(rid, BEST_CONFIG, tmp, uri).read_text()
        if with_images:
            pngs = sorted(tracking.list_artifacts(rid, PLOTS_DIR, uri),
                          key=lambda n: (RATE_DISTORTION not in n, n))
            for name in (n for n in pngs if n.endswith(".png")):
                data = tracking.download_artifact(rid, name, tmp, uri).read_bytes()
                stem = Path(name).stem
                caption = ("rate-distortion across beta" if stem == RATE_DISTORTION
                           else stem.replace("_vs_", " vs "))
                plots.append(Image(f"sweep_{rid[:8]}_{stem}.png", data, caption))
    keys = [k for k in header if "." in k]  # swept hyperparameters are dotted config keys
    best_trial = run.data.tags.get(schema.BEST_TRIAL, "")
    if rows and keys and metric in header:
        top = rows[0]
        swept = {k: top[header.index(k)] for k in keys}
        best_trial = best_trial or top[0]
    return Sweep(rid, run.info.run_name or rid[:8], run.data.tags.get(schema.MODEL, "?"),
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


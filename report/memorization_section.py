"""The report's Memorization section: per family that samples, its copy scores (the numbers are
also columns of the results table, through the metric registry) and the grid of its closest
(sample, training image) pairs, which `genbench eval --metrics memorization` logged as a PNG of
the evaluation (eval/metrics/memorization.py)."""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass

from pipeline import schema, tracking
from report.data import Image, fmt
from report.records import stamps_of

KEYS = ("c_t_pixels", "c_t_features", "copy_fraction")
COPY_THRESHOLD = -3.0   # eval.memorization.COPY_THRESHOLD
HOW_TO_READ = ("How to read C_T (Meehan et al. 2020, a Mann-Whitney test of the samples' "
               "distances to their nearest training image against unseen test images'): near 0, "
               "the samples are as far from the training set as unseen images are; strongly "
               f"negative (below {COPY_THRESHOLD:g}) means copying; strongly positive, "
               "underfitting (samples far from all training data).")


@dataclass
class MemorizationEntry:
    family: str
    run_id: str
    values: dict            # key -> text
    copying: bool
    protocol: str
    grid: Image | None
    how_to_read: str = HOW_TO_READ


def memorization_entries(rows: list, uri: str, with_images: bool = True
                         ) -> list[MemorizationEntry]:
    out = []
    for row in rows:
        if KEYS[0] not in row.metrics:
            continue
        stamps = stamps_of(row, KEYS[0])
        c_t = [row.metrics.get(k) for k in KEYS[:2]]
        copying = any(v is not None and v < COPY_THRESHOLD for v in c_t)
        protocol = "; ".join(f"{f}: {stamps[schema.eval_tag('memorization', f)]}"
                             for f in ("method", "images", "reference")
                             if schema.eval_tag("memorization", f) in stamps)
        grid = None
        path = stamps.get(schema.figure_tag("memorization"))
        if with_images and path:
            grid = _download(row, path, uri)
        out.append(MemorizationEntry(row.family, row.run_id,
                                     {k: fmt(row.metrics.get(k)) for k in KEYS}, copying,
                                     protocol, grid))
    return out


def _download(row, path: str, uri: str) -> Image | None:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = tracking.download_artifact(row.run_id, path, tmp, uri).read_bytes()
    except Exception:  # a missing artifact: the section shows the numbers without the grid
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", row.family)
    return Image(f"memorization_{safe}.png", data,
                 f"{row.family}: the closest (sample, nearest training image) pairs, closest "
                 f"first; sample left, training image right")

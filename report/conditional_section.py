"""The report's "Class-conditional samples" section: for each conditional run (the OOD study's
runs stay out of the main table), CAS, its ceiling on real images and intra-class FID, which
`genbench eval --metrics cas,intra_fid` logged (eval/metrics/cas.py)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline import schema
from report.data import fmt, kind
from report.records import stamps_of

CAS, CAS_REAL = "cas", "cas_real"
HOW_TO_READ = ("CAS (Classification Accuracy Score, Ravuri & Vinyals 2019): a classifier trained "
               "only on the model's labelled samples, scored on the real test split, beside the "
               "same recipe trained on as many real images (the ceiling). A model whose samples "
               "of class y look like class y to a classifier comes close to the ceiling; FID can "
               "be good while CAS is poor (wrong or blurred classes). Intra-class FID: FID within "
               "each class, averaged over classes; its floor is real train images of each class.")


@dataclass
class ConditionalEntry:
    family: str
    run_id: str
    values: dict          # key -> text: cas, cas_real, intra_fid, floor
    protocol: str
    how_to_read: str = HOW_TO_READ


def conditional_entries(runs: list) -> list[ConditionalEntry]:
    """One entry per conditional run that logged CAS or intra-class FID, newest first per
    family (the runs as report/records.py reads them)."""
    out, seen = [], set()
    for run in runs:
        family = run.data.tags.get(schema.MODEL)
        m = run.data.metrics
        intra = sorted(k for k in m if k.startswith("intra_fid_"))
        if (kind(run) not in (schema.TRAIN, schema.EVAL) or family in seen
                or not schema.is_conditional(run.data.params) or not (CAS in m or intra)):
            continue
        seen.add(family)
        key = intra[0] if intra else None
        stamps = stamps_of(run, CAS if CAS in m else key)
        protocol = "; ".join(f"{label} {stamps[tag]}" for label, tag in (
            ("CAS: per class", schema.eval_tag(CAS, "per_class")),
            ("epochs", schema.eval_tag(CAS, "epochs")),
            ("test images", schema.eval_tag(CAS, "test_images")))
            if tag in stamps)
        out.append(ConditionalEntry(family, run.info.run_id, {
            CAS: fmt(m.get(CAS)), CAS_REAL: fmt(m.get(CAS_REAL)),
            "intra_fid": fmt(m.get(key)) if key else "—",
            "floor": fmt(m.get(schema.floor_key(key))) if key else "—",
            "extractor": key[len("intra_fid_"):] if key else ""}, protocol))
    return out

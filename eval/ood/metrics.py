"""Detection metrics for out-of-distribution scores: AUROC, AUPR and FPR at 95% TPR.

Convention: the OOD set is the positive class, and a higher score means "more out of
distribution" (bits/dim, reconstruction error, -log D(x), 1 - max softmax probability). A
detector flags x when score(x) >= t; tied scores are flagged together, so ties never make a
detector look better than a coin flip between them.

- AUROC: P(s_ood > s_in) + P(s_ood = s_in) / 2 (the Mann-Whitney statistic, midranks for ties).
- AUPR: average precision with OOD positive, sum over thresholds of (R_t - R_t-1) * P_t, the
  step-wise area that sklearn.metrics.average_precision_score computes (no interpolation).
- FPR@95: the fraction of in-distribution inputs flagged at the highest threshold that flags at
  least 95% of the OOD inputs (Hendrycks & Gimpel 2017).
"""
from __future__ import annotations

import numpy as np

from pipeline.schema import OOD_METRICS as METRICS  # the keys detection_metrics returns

TPR_LEVEL = 0.95


def _as_scores(values, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"no {name} scores")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} scores hold NaN or infinity")
    return a


def _threshold_counts(s_in: np.ndarray, s_ood: np.ndarray):
    """(true positives, false positives) at each distinct threshold, highest threshold first."""
    scores = np.concatenate([s_ood, s_in])
    is_ood = np.concatenate([np.ones(len(s_ood)), np.zeros(len(s_in))])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_ood = scores[order], is_ood[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(is_ood)[last_of_group]
    fp = (last_of_group + 1) - tp
    return tp, fp


def auroc(s_in, s_ood) -> float:
    s_in, s_ood = _as_scores(s_in, "in-distribution"), _as_scores(s_ood, "OOD")
    scores = np.concatenate([s_ood, s_in])
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # midranks: every member of a tie group gets the mean of the group's ranks (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2
    n_o, n_i = len(s_ood), len(s_in)
    return float((ranks[:n_o].sum() - n_o * (n_o + 1) / 2) / (n_o * n_i))


def aupr(s_in, s_ood) -> float:
    s_in, s_ood = _as_scores(s_in, "in-distribution"), _as_scores(s_ood, "OOD")
    tp, fp = _threshold_counts(s_in, s_ood)
    precision = tp / (tp + fp)
    recall = tp / len(s_ood)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(s_in, s_ood, level: float = TPR_LEVEL) -> float:
    s_in, s_ood = _as_scores(s_in, "in-distribution"), _as_scores(s_ood, "OOD")
    tp, fp = _threshold_counts(s_in, s_ood)
    # integer comparison: tp / n >= level without floating-point surprises at exact levels
    needed = int(np.ceil(round(level * len(s_ood), 9)))
    first = int(np.flatnonzero(tp >= needed)[0])
    return float(fp[first] / len(s_in))


def detection_metrics(s_in, s_ood) -> dict[str, float]:
    """{"auroc", "aupr", "fpr95"} for one (score, OOD set)."""
    return {"auroc": auroc(s_in, s_ood), "aupr": aupr(s_in, s_ood),
            "fpr95": fpr_at_tpr(s_in, s_ood)}

"""AUROC, AUPR and FPR@95 against hand computations (ties included) and scikit-learn."""
import numpy as np
import pytest

from eval.ood.metrics import aupr, auroc, detection_metrics, fpr_at_tpr


def test_hand_computed_case_with_ties():
    s_in, s_ood = [1, 2, 3, 3], [3, 4, 2]
    # pairs (ood, in): 3 beats 1, 2 and ties 3, 3 -> 3; 4 beats all -> 4; 2 beats 1, ties 2 -> 1.5
    assert auroc(s_in, s_ood) == pytest.approx(8.5 / 12)
    # thresholds 4, 3, 2, 1: (tp, fp) = (1, 0), (2, 2), (3, 3), (3, 4);
    # AP = 1/3 * 1 + 1/3 * 1/2 + 1/3 * 1/2
    assert aupr(s_in, s_ood) == pytest.approx(2 / 3)
    # 95% of 3 OOD inputs needs all 3: threshold 2 flags 2, 3, 3 of the in-distribution ones
    assert fpr_at_tpr(s_in, s_ood) == pytest.approx(3 / 4)


def test_fpr_at_exactly_95_percent_tpr():
    s_ood = np.arange(1.0, 21.0)   # 20 OOD scores: threshold 2 flags 19 of them, TPR = 0.95 exactly
    s_in = [5.5, 0.0, 1.5, 100.0]  # flagged at threshold 2: 5.5 and 100
    assert fpr_at_tpr(s_in, s_ood) == 0.5


def test_perfect_reversed_and_constant_scores():
    assert detection_metrics([0, 1], [2, 3]) == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    reverse = detection_metrics([2, 3], [0, 1])
    assert reverse["auroc"] == 0.0 and reverse["fpr95"] == 1.0
    # thresholds 3, 2, 1, 0: (tp, fp) = (0, 1), (0, 2), (1, 2), (2, 2): 1/2 * 1/3 + 1/2 * 1/2
    assert reverse["aupr"] == pytest.approx(5 / 12)
    tied = detection_metrics([5, 5, 5], [5, 5])
    # one tie group: a coin flip; everything is flagged at once
    assert tied == {"auroc": 0.5, "aupr": pytest.approx(2 / 5), "fpr95": 1.0}


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no OOD"):
        auroc([1.0], [])
    with pytest.raises(ValueError, match="NaN"):
        auroc([1.0, float("nan")], [2.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_sklearn_on_tied_scores(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    s_in = rng.integers(0, 12, 300).astype(float)      # few distinct values: many ties
    s_ood = rng.integers(4, 16, 200).astype(float)
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_ood))]
    s = np.r_[s_in, s_ood]
    assert auroc(s_in, s_ood) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert aupr(s_in, s_ood) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
    assert fpr_at_tpr(s_in, s_ood) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-12)

"""The metric sanity panel (eval/metrics/sanity.py, report/sanity.py): `genbench eval` scores
real train images, a mode-collapsed set and uniform noise against the reference exactly as it
scores a model; the report judges them. On correct metrics every expectation is met; with
precision and recall swapped (torch-fidelity #58) the panel fails and the report says so at
its top. Real Fashion-MNIST, the session's test domain classifier, real MLflow on sqlite; the
model is an untrained tiny VAE in a checkpoint (the panel does not depend on it)."""
from __future__ import annotations

import re

import pytest

from genbench.cli import main
from pipeline import tracking
from report.render import write_report
from testing.evalkit import save_checkpoint, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = "300"   # images per set: the panel uses the fidelity numbers' n
EVAL = ["--n-fake", N, "--n-real", N, "--quiet"]


@pytest.fixture
def checkpoint(domain_classifier, mlflow_uri, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_CACHE", str(domain_classifier))
    cfg, nets, opts = tiny_model("vae")
    save_checkpoint(tmp_path / "ck", cfg, nets, opts)
    return str(tmp_path / "ck")


def evaluate_and_report(checkpoint: str, tmp_path, experiment: str, metrics: str
                        ) -> tuple[dict, str, str]:
    assert main(["eval", "--checkpoint", checkpoint, "--experiment", experiment, "--metrics",
                 metrics, *EVAL]) == 0
    run = tracking.client().search_runs(
        [tracking.client().get_experiment_by_name(experiment).experiment_id],
        "tags.`genbench.kind` = 'eval'")[0]
    html = write_report(experiment, tmp_path / "report", quiet=True)
    return run.data.metrics, (tmp_path / "report" / "report.md").read_text(), html.read_text()


def test_the_panel_passes_on_correct_metrics(checkpoint, tmp_path):
    # no FID of the model: an untrained VAE's (grey blobs) is rightly worse than noise's
    metrics, md, html = evaluate_and_report(checkpoint, tmp_path, "sanity-ok", "prc,dc,sanity")
    for case in ("train", "collapsed", "noise"):
        for metric in ("fid", "precision", "recall", "density", "coverage"):
            assert f"sanity_{case}_{metric}_domain" in metrics, (case, metric)
    # the real-vs-real set is the floor set: the same numbers as the floor logged beside it
    assert metrics["sanity_train_recall_domain"] == pytest.approx(metrics["floor_recall_domain"])
    assert metrics["sanity_collapsed_recall_domain"] < metrics["sanity_collapsed_precision_domain"]
    assert metrics["sanity_noise_fid_domain"] > 10 * metrics["sanity_train_fid_domain"]
    assert "## Metric sanity panel" in md and "all expectations met" in md, md
    assert "FAILED" not in md and "sanity checks failed" not in md
    assert 'data-passed="true"' in html and 'id="sanity-failures"' not in html


def test_the_panel_fails_and_says_so_when_precision_and_recall_are_swapped(checkpoint, tmp_path,
                                                                           monkeypatch):
    import eval.fidelity

    right = eval.fidelity.precision_recall

    def swapped(fake, real, *args, **kwargs):
        precision, recall = right(fake, real, *args, **kwargs)
        return recall, precision

    monkeypatch.setattr(eval.fidelity, "precision_recall", swapped)
    metrics, md, html = evaluate_and_report(checkpoint, tmp_path, "sanity-swapped",
                                            "prc,dc,sanity")
    # the mode-collapsed set now shows low precision and high recall
    assert metrics["sanity_collapsed_precision_domain"] < metrics["sanity_collapsed_recall_domain"]
    top = md.split("## Results")[0]
    assert "## Metric sanity checks failed" in top
    failures = [line for line in top.splitlines() if line.startswith("- Sanity check failed")]
    assert any("mode-collapsed (one class): precision" in f for f in failures), failures
    assert any("mode-collapsed (one class): recall" in f for f in failures), failures
    assert all(re.search(r"got (precision|recall|fid|density|coverage) ", f) for f in failures)
    assert 'id="sanity-failures"' in html and 'data-passed="false"' in html


def test_coverage_near_one_is_judged_only_with_as_many_generated_as_real_images():
    """The quick bench's PixelCNN: 300 generated vs 2,000 test images; real train images then
    cover ~half of the test set (k-NN balls of 2,000 points, 300 probes): no failure."""
    from report.sanity import Panel, judge

    values = {("train", "precision"): 0.92, ("train", "recall"): 0.92,
              ("train", "density"): 1.06, ("train", "coverage"): 0.53}
    small = judge(Panel("domain", "300", "2000", ["pixelcnn"], values), [])
    same = judge(Panel("domain", "2000", "2000", ["vae"], values), [])
    assert all(c.passed for c in small) and not any("coverage" in c.expectation for c in small)
    assert [c.expectation for c in same if not c.passed] == [
        "real train vs real test: coverage >= 0.6 (near 1)"]

"""The report's "Can it reject the unseen?" section, from runs whose eval metrics the test logs
into a private sqlite MLflow store (the names and tags `genbench eval --metrics ood,bayes` uses)."""
import pytest
import torch

from report.render import write_report
from report.collect import collect
from pipeline import tracking
from pipeline.grids import grid_png

EXP = "report-ood"


def ood_run(family: str, metrics: dict, params: dict | None = None, tags: dict | None = None,
            figure: bool = False) -> str:
    run_id = tracking.start_run(EXP, family, {"model": family, "data.dataset": "fashion-mnist",
                                              "train.conditional": False,
                                              "data.exclude_classes": [], **(params or {})},
                                {"genbench.kind": "train", "genbench.model": family,
                                 "genbench.dataset": "fashion-mnist", **(tags or {})})
    logger = tracking.RunLogger(run_id, tracking.tracking_uri())
    logger.metrics({"loss": 1.0}, 1)
    logger.metrics({**metrics, "bpd_test": 4.0} if family == "vae" else metrics, 10)
    if figure:
        png = grid_png(torch.zeros(4, 1, 28, 28, dtype=torch.uint8))
        logger.figure_png(png, "eval/x/ood_histograms.png")
        tracking.set_tags(run_id, {"eval.ood.figure": "eval/x/ood_histograms.png"})
    logger.close()
    tracking.end_run(run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-ood")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        runs = {
            "vae": ood_run("vae", {
                "ood_auroc_noise_bpd": 1.0, "ood_auroc_digits_bpd": 0.3,
                "ood_auroc_noise_ratio": 0.97, "ood_auroc_digits_ratio": 0.8,
                "ood_auroc_noise_complexity": 0.4, "ood_auroc_digits_complexity": 0.95,
                "ood_auroc_noise_msp": 0.99, "ood_auroc_digits_msp": 0.7,
                "ood_aupr_noise_bpd": 1.0, "ood_fpr95_noise_bpd": 0.0},
                tags={"eval.ood.images_per_set": "300",
                      "eval.ood.set.mnist": "skipped: MNIST is not on disk"}, figure=True),
            "vae_unseen": ood_run("vae", {"ood_auroc_unseen_bpd": 0.62,
                                          "ood_auroc_unseen_msp": 0.71},
                                  {"data.exclude_classes": [8]},
                                  {"eval.ood.exclude_classes": "8"}),
            "vae_conditional": ood_run("vae", {
                "bayes_accuracy": 0.70, "bayes_nll": 0.9, "bayes_ece": 0.05,
                "classifier_accuracy": 0.90, "classifier_nll": 0.3, "classifier_ece": 0.02,
                "ood_auroc_digits_bpd": 0.35}, {"train.conditional": True}),
            "gan": ood_run("gan", {"ood_auroc_noise_neglogd": 0.45,
                                   "ood_auroc_digits_neglogd": 0.6}),
            "mp": mp, "root": root}
        yield runs


def test_section_table_sentences_and_bayes(store):
    data = collect(EXP)
    vae_row = next(r for r in data.rows if r.family == "vae")
    assert vae_row.run_id == store["vae"]            # the main table keeps the plain run
    ood = data.ood
    assert ood.sets == ["unseen", "digits", "noise"]
    rows = {r.label: r for r in ood.rows}
    bpd = rows["vae · bits/dim"]
    assert bpd.cells["digits"].value == 0.3 and bpd.cells["unseen"].value == 0.62
    assert "fails on digits (sklearn)" in bpd.sentence and "Nalisnick" in bpd.sentence
    assert "Rejects noise" in bpd.sentence and "only partly separates unseen class" in bpd.sentence
    assert "fixes raw bits/dim's failure on digits" in rows["vae · likelihood ratio"].sentence
    assert "fails where raw bits/dim did not (noise)" in rows["vae · input complexity"].sentence
    assert rows["vae · p(x) = Σ_y p(x|y) p(y)"].cells["digits"].value == 0.35
    classifier = rows["domain classifier · max softmax"]
    assert classifier.cells["unseen"].value == 0.71 and classifier.cells["noise"].value == 0.99
    assert rows["gan · -log D(x)"].cells["unseen"].text == "—"
    assert "Fails on noise" in rows["gan · -log D(x)"].sentence
    bayes = {b.label: b for b in ood.bayes}
    assert "20.0 points below the discriminative classifier" in \
        bayes["vae · Bayes' rule on p(x|y)"].sentence
    assert bayes["domain classifier · softmax"].cells["accuracy"].value == 0.9
    assert any("images per OOD set: 300" in n for n in ood.notes)
    assert [i.name for i in ood.images] == ["ood_vae.png"]
    # the section summarises the OOD stamps; the general protocol table leaves them out
    assert not any(key.startswith("eval.ood") for key, _ in data.protocol)


def test_rendered_markdown_and_html(store):
    out = store["root"] / "out"
    html = write_report(EXP, out, quiet=True)
    md = (out / "report.md").read_text()
    section = md.split("## Can it reject the unseen?")[1].split("## Samples")[0]
    assert "| vae · bits/dim | 0.620 | 0.300 | 1.000 |" in section
    assert "### Bayes' rule" in section and "| 0.7 |" in section
    assert "![ood_vae.png](images/ood_vae.png)" in section
    assert (out / "images" / "ood_vae.png").read_bytes()[:4] == b"\x89PNG"
    text = html.read_text()
    assert 'id="ood-table"' in text and 'id="bayes-table"' in text
    assert 'data-key="ood_auroc_digits" data-value="0.3"' in text


def test_no_ood_metrics_no_section(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    ood_run("ae", {"mse_test": 0.01})
    assert collect(EXP).ood is None
    write_report(EXP, tmp_path / "out", quiet=True)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Not measured yet: `genbench eval --run-id ID --metrics ood,bayes`" in md

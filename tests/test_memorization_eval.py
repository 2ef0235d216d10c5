"""`genbench eval --metrics memorization` (eval/metrics/memorization.py) end to end: it logs
Meehan et al.'s C_T in pixels and features and the copy fraction on the evaluation record with
their stamps, and the closest-pairs grid as a PNG artifact; a "model" whose samples are
training images is flagged, an (untrained) model that copies nothing is not; the report shows
the numbers and a Memorization section with the grid. Real Fashion-MNIST (the whole training
split), the session's test domain classifier, MLflow on sqlite."""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from eval.memorization import COPY_THRESHOLD
from genbench.cli import main
from pipeline import tracking
from report.render import write_report
from testing.evalkit import save_checkpoint, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 200   # samples: 200 x 54,000 training images, in pixels and in features


@pytest.fixture
def checkpoint(domain_classifier, mlflow_uri, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_CACHE", str(domain_classifier))
    cfg, nets, opts = tiny_model("vae")
    save_checkpoint(tmp_path / "ck", cfg, nets, opts)
    return str(tmp_path / "ck")


def evaluate(checkpoint: str, experiment: str, metrics: str):
    assert main(["eval", "--checkpoint", checkpoint, "--experiment", experiment, "--metrics",
                 metrics, "--n-fake", str(N), "--n-real", str(N), "--quiet"]) == 0
    client = tracking.client()
    exp = client.get_experiment_by_name(experiment).experiment_id
    run = client.search_runs([exp], "tags.`genbench.kind` = 'eval'")[0]
    record = tracking.get_run(run.data.tags["genbench.eval_record"])
    return run, record


def test_memorization_is_logged_with_its_grid_and_reported(checkpoint, tmp_path):
    run, record = evaluate(checkpoint, "memo", "fid,memorization")
    metrics, params = record.data.metrics, record.data.params
    for key in ("c_t_pixels", "c_t_features", "copy_fraction"):
        assert key in metrics, key
    # an untrained VAE draws grey blobs: far from every training image, nothing copied
    assert metrics["c_t_pixels"] > COPY_THRESHOLD and metrics["c_t_features"] > COPY_THRESHOLD
    assert metrics["copy_fraction"] < 0.5
    assert params["eval.memorization.method"].startswith("Meehan et al. 2020 C_T")
    assert params["eval.memorization.images"] == str(N)        # the fidelity pass's samples
    assert params["eval.memorization.train_images"] == "54000"
    assert params["eval.memorization.test_images"] == str(N)
    figure = params["eval.memorization.figure"]
    assert figure.endswith("/memorization_pairs.png")
    png = tracking.download_artifact(run.info.run_id, figure, str(tmp_path)).read_bytes()
    grid = Image.open(io.BytesIO(png))
    assert grid.width > grid.height > 32          # 16 pairs, 4 a row: 4 rows of 8 tiles

    html = write_report("memo", tmp_path / "report", quiet=True)
    md = (tmp_path / "report" / "report.md").read_text()
    section = md.split("## Memorization")[1].split("## Training curves")[0]
    assert "strongly negative" in section and "no copying detected" in section
    assert "![memorization_vae.png](images/memorization_vae.png)" in section
    assert (tmp_path / "report" / "images" / "memorization_vae.png").read_bytes() == png
    assert "C_T pixels" in md.split("## Results")[1].split("##")[0]   # a column, via the registry
    assert 'id="memorization"' in html.read_text()


def test_a_model_that_returns_training_images_is_flagged(checkpoint, tmp_path, monkeypatch):
    """Alone (no fidelity pass), memorization generates its own samples: here the generator
    hands back training images, as a model that memorised its data would."""
    import eval.metrics.memorization as memo
    from pipeline.data import load_split

    train = load_split("fashion-mnist", "train", None, 0.1, 0, 32).images

    def copies(cfg, nets, n, *args, **kwargs):
        picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))[:n]
        return train[picked], None

    monkeypatch.setattr(memo, "generate", copies)
    _, record = evaluate(checkpoint, "memo-copies", "memorization")
    metrics = record.data.metrics
    assert metrics["c_t_pixels"] < COPY_THRESHOLD and metrics["c_t_features"] < COPY_THRESHOLD
    assert metrics["copy_fraction"] == 1.0
    assert record.data.params["eval.memorization.images"] == str(N)
    write_report("memo-copies", tmp_path / "report", quiet=True)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| copying |" in md.split("## Memorization")[1]

"""A metric is one module and one registry line: this file is the module, the register() call
in the fixture below the line. `genbench eval --metrics pixel_mean` computes and logs it, and the report shows
it (label, direction arrow, its stamp) without a word about it anywhere in genbench."""
from __future__ import annotations

import pytest

from eval import metrics
from eval.metrics import Metric
from genbench.cli import main
from pipeline import tracking

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pixel_mean(ctx, names):
    """The mean pixel value of n samples (0-255): a toy, but computed from the model."""
    from eval.samples import generate

    n = 32
    fake, _ = generate(ctx.model.cfg, ctx.model.nets, n, ctx.test.image_shape,
                       seed=ctx.opts.seed, batch_size=n, device=ctx.device, quiet=True)
    ctx.metrics["pixel_mean"] = fake.float().mean().item()
    ctx.stamp("pixel_mean", "images", n)
    ctx.stamp("pixel_mean", "seed", ctx.opts.seed)


PIXEL_MEAN = Metric("pixel_mean", "mean pixel", "higher", ("sample",), ("images", "seed"),
                    pixel_mean)


@pytest.fixture(autouse=True)
def registered():
    """For each test here only (the suite's other tests see the built-ins)."""
    metrics.register(PIXEL_MEAN)          # the one registration line
    yield
    metrics.unregister("pixel_mean")


@pytest.mark.uses_family("vae")
def test_a_registered_metric_is_computed_logged_and_reported(family_run, monkeypatch, tmp_path,
                                                             capsys):
    from report.render import write_report
    from test_report import parse

    run = family_run("vae")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run.uri)
    assert main(["eval", "--run-id", run.run_id, "--metrics", "pixel_mean", "--quiet"]) == 0
    assert "pixel_mean" in capsys.readouterr().out           # eval's printed table
    parent = tracking.get_run(run.run_id)
    value = parent.data.metrics["pixel_mean"]
    assert 0 <= value <= 255
    assert parent.data.tags["eval.pixel_mean.images"] == "32"
    # the evaluation's own record: a child run with the protocol as params, the number as metric
    record = tracking.get_run(parent.data.tags["genbench.eval_record"])
    assert record.data.tags["genbench.kind"] == "evaluation"
    assert record.data.tags["mlflow.parentRunId"] == run.run_id
    assert record.data.params["eval.pixel_mean.images"] == "32"
    assert record.data.metrics == {"pixel_mean": value}

    html = write_report(run.experiment, tmp_path / "report", quiet=True).read_text()
    page = parse(html)
    [cell] = [c for c in page.cells if c["key"] == "pixel_mean"]
    assert float(cell["value"]) == value and cell["run_id"] == run.run_id
    header = html.split('<th data-column="pixel_mean"', 1)[1].split("</th>", 1)[0]
    assert 'title="higher is better"' in header and "mean pixel ↑" in header
    td = html.split('data-key="pixel_mean"', 1)[1].split(">", 1)[0]
    assert f'data-eval="{record.info.run_id}"' in td
    assert "images=32" in td and "seed=0" in td and f"evaluation {record.info.run_id[:8]}" in td
    md = (tmp_path / "report" / "report.md").read_text()
    assert "mean pixel ↑" in md


def test_the_registry_judges_keys_it_was_never_told_about():
    from pipeline.models import FAMILIES

    assert metrics.label("pixel_mean") == "mean pixel"
    assert metrics.direction("pixel_mean") == "higher"
    assert metrics.main_table_key("pixel_mean")
    assert metrics.applicable(FAMILIES["vae"], "pixel_mean")
    assert not metrics.applicable(FAMILIES["ae"], "pixel_mean")    # an AE has no sampler
    assert metrics.stamp_fields("pixel_mean") == ("eval.pixel_mean", "eval.pixel_mean.images",
                                                  "eval.pixel_mean.seed")
    # built-ins through the same table
    assert metrics.label("fid_inception") == "FID (inception)"
    assert metrics.direction("kid_domain") == "lower"
    assert not metrics.applicable(FAMILIES["gan"], "bpd_test")
    assert metrics.applicable(FAMILIES["ae"], "mse_test")
    assert not metrics.applicable(FAMILIES["vae"], "mse_test")     # the VAE has bits/dim
    assert not metrics.main_table_key("ood_auroc_noise_bpd")       # the OOD section's
    with pytest.raises(ValueError, match="already registered"):
        metrics.register(Metric("fid", "mine", "lower", compute=pixel_mean))
    with pytest.raises(ValueError, match="direction"):
        Metric("bad", "bad", "sideways", compute=pixel_mean)


def test_an_unknown_metric_names_the_registered_ones(capsys, tmp_path):
    assert main(["eval", "--checkpoint", str(tmp_path / "x"), "--metrics", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown metric(s) nope" in err
    assert "pixel_mean" in err

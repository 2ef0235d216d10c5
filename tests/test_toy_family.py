"""A family that no source file of genbench knows, installed the way a user installs one: the
package testing/toy_family (`make venv` runs `pip install -e testing/toy_family`), whose entry
point in the group `genbench.families` names its module, genbench_toy. It then runs through
`genbench train --workers 2`, `genbench eval`, a 2-trial `genbench tune` and `genbench report`.
Ray workers and Tune trials are other processes: they find the toy through the same entry
point, as nothing in a config names code to import.
"""
from __future__ import annotations

import importlib.metadata

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SETS = ["--set", "train.batch_size=32", "--set", "train.log_every=2",
        "--set", "train.checkpoint_every=4"]


@pytest.fixture(scope="module", autouse=True)
def toy_installed():
    if not importlib.metadata.entry_points(group="genbench.families", name="toy"):
        pytest.fail("the toy family is not installed: run `make venv` (or "
                    ".venv/bin/pip install -e testing/toy_family)")


def test_the_registry_finds_the_toy_through_its_entry_point():
    import genbench_toy

    from pipeline.config import Config as RunConfig
    from pipeline.models import FAMILIES, can, from_entry_point, get, is_built_in

    assert "toy" in FAMILIES and not is_built_in("toy") and from_entry_point("toy")
    assert get("toy") is genbench_toy
    assert can("toy", "sample") and can("toy", "nll") and not can("toy", "encode")
    saved = RunConfig.from_dict({"model": "toy"}).to_dict()
    assert saved["model"] == "toy" and saved["toy"] == {"lr": 0.05}
    assert "family_module" not in saved     # the name travels, never a module


def test_toy_family_trains_evaluates_sweeps_and_is_reported(ray_local, tmp_path, monkeypatch,
                                                            tmp_path_factory, capsys):
    from genbench_toy import LIKELIHOOD_NOTE
    from testing.evalkit import domain_cache

    from genbench.cli import main
    from pipeline import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("GENBENCH_CACHE", str(domain_cache(tmp_path_factory.getbasetemp())))

    # train: DDP over 2 Ray workers, which find the toy through its entry point
    assert main(["train", "--model", "toy", "--workers", "2", "--steps", "8",
                 "--experiment", "toy", *SETS]) == 0
    c = tracking.client()
    exp = c.get_experiment_by_name("toy").experiment_id
    (run,) = c.search_runs([exp], "tags.`genbench.kind` = 'train'")
    assert run.info.status == "FINISHED" and run.data.params["model"] == "toy"
    assert run.data.metrics["bpd"] < 8.0          # learned something from uniform (8 bits/dim)
    assert any(a.path.startswith("samples") for a in c.list_artifacts(run.info.run_id))

    # eval: exact bits/dim and FID & co. through the same contract
    assert main(["eval", "--run-id", run.info.run_id, "--n-fake", "200", "--n-real", "200",
                 "--bpd-images", "200", "--quiet"]) == 0
    run = c.get_run(run.info.run_id)
    assert 0 < run.data.metrics["bpd_test"] < 8.0
    assert run.data.tags["eval.bpd"] == LIKELIHOOD_NOTE and run.data.tags["eval.bpd.k"] == "1"
    assert run.data.metrics["fid_domain"] > 0
    assert run.data.tags["eval.probe"].startswith("not applicable")   # no encoder

    # tune: 2 trials in Tune trial processes; no validation loss, so the small-sample FID
    assert main(["tune", "--model", "toy", "--samples", "2", "--steps", "2",
                 "--scheduler", "fifo", "--experiment", "toy", *SETS]) == 0
    (parent,) = c.search_runs([exp], "tags.`genbench.kind` = 'tune'")
    assert parent.data.params["tune.metric"] == "val_fid_domain"
    children = c.search_runs([exp], "tags.`genbench.kind` = 'tune-trial'")
    assert len(children) == 2
    for child in children:
        assert child.data.metrics["val_fid_domain"] > 0
        assert 0.01 <= float(child.data.params["toy.lr"]) <= 0.1

    # report: the toy has its row, its numbers and its sweep
    capsys.readouterr()
    assert main(["report", "--experiment", "toy", "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| toy")]
    assert rows and f"{run.data.metrics['bpd_test']:.4g}" in rows[0]
    assert "tune-toy" in md and "val_fid_domain" in md

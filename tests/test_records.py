"""`genbench eval --checkpoint` writes into the run its checkpoint names only when that run is in
this store and records the checkpoint's config; otherwise into a new run, saying which."""
import re

import pytest

from genbench.cli import main
from pipeline import tracking
from testing.evalkit import save_checkpoint, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EVAL_BPD = ["--metrics", "bpd", "--bpd-images", "50", "--quiet"]


def logged_into(out: str) -> str:
    return re.search(r"MLflow run ([0-9a-f]{32})", out).group(1)


def test_checkpoint_logs_into_its_run_only_when_the_config_matches(mlflow_uri, workdir,
                                                                   tmp_path, capsys):
    cfg, nets, opts = tiny_model("pixelcnn")
    # the run as `genbench train` starts it (pipeline/launch.py): its config as params
    run_id = tracking.start_run("train-records", "pixelcnn", {**cfg.flat(),
                                "train.total_steps": 5}, {"genbench.kind": "train"})
    tracking.end_run(run_id)
    save_checkpoint(tmp_path / "ck", cfg, nets, opts, run_id=run_id)
    assert main(["eval", "--checkpoint", str(tmp_path / "ck"), *EVAL_BPD]) == 0
    out = capsys.readouterr().out
    assert logged_into(out) == run_id
    assert f"note: logged into the checkpoint's MLflow run {run_id}" in out
    assert "bpd_test" in tracking.get_run(run_id).data.metrics

    # another model (seed 7) in a checkpoint that names the same run: a new run, and why
    cfg7, nets7, opts7 = tiny_model("pixelcnn", seed=7)
    save_checkpoint(tmp_path / "other", cfg7, nets7, opts7, run_id=run_id)
    assert main(["eval", "--checkpoint", str(tmp_path / "other"), *EVAL_BPD]) == 0
    out = capsys.readouterr().out
    new = logged_into(out)
    assert new != run_id
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == [f"note: the checkpoint's MLflow run {run_id} records another config "
                     f"(train.seed is '0' there, '7' in the checkpoint); logged into a new run"]
    assert tracking.get_run(new).data.tags["genbench.checkpoint_run_id"] == run_id
    history = tracking.client().get_metric_history(run_id, "bpd_test")
    assert len(history) == 1   # the second model's number never reached the first's run


@pytest.mark.slow
@pytest.mark.uses_family("pixelcnn")
def test_checkpoint_of_a_real_train_run_logs_into_that_run(family_run, workdir, monkeypatch,
                                                             capsys):
    """A checkpoint that `genbench train` wrote (its config completed at launch, e.g.
    train.cpus_per_worker) matches the params that train logged."""
    run = family_run("pixelcnn")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run.uri)
    path = tracking.client().download_artifacts(run.run_id, "checkpoint/checkpoint.pt",
                                                str(workdir))
    assert main(["eval", "--checkpoint", path, *EVAL_BPD]) == 0
    out = capsys.readouterr().out
    assert logged_into(out) == run.run_id, out

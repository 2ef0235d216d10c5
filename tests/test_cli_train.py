"""`genbench train --model M --workers 2 --steps 30` for every family (the session's family_run,
conftest.py): exit 0, one FINISHED MLflow run with step metrics, params, tags, a sample-grid PNG
and the checkpoint."""
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import checkpoint as ckpt
from pipeline import schema

pytestmark = pytest.mark.slow

STEPS = 30
LOSS_KEY = {"ae": "mse", "vae": "bpd", "gan": "d_loss", "pixelcnn": "bpd"}


def artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def check_run(uri: str, experiment: str, model: str, tmp_path: Path) -> str:
    """Everything the issue asks of a finished train run; returns its id."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    # the training run; each `genbench eval` of it adds an evaluation record beside it
    runs = [r for r in client.search_runs([exp.experiment_id])
            if schema.kind(r.data.tags) == schema.TRAIN]
    assert len(runs) == 1, f"expected one training run in {experiment}, found {len(runs)}"
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"

    history = client.get_metric_history(run_id, LOSS_KEY[model])
    assert len(history) >= 2 and max(m.step for m in history) == STEPS
    for key in ("images_per_s", "epoch"):
        assert len(client.get_metric_history(run_id, key)) >= 2
    assert any(k.startswith("lr") for k in run.data.metrics)
    if model == "gan":
        assert {"d_real", "d_fake", "g_loss"} <= set(run.data.metrics)
        assert 0 <= run.data.metrics["d_real"] <= 1
    if model in ("vae", "pixelcnn"):
        assert 0 < run.data.metrics["bpd"] < 16  # bits/dim of 8-bit pixels

    params = run.data.params
    assert params["model"] == model and params["train.workers"] == "2"
    assert run.info.run_name == f"{model}-fashion-mnist-seed{params['train.seed']}"
    assert params["train.total_steps"] == str(STEPS) and params["train.batch_size"] == "32"
    tags = run.data.tags
    assert tags["genbench.kind"] == "train" and tags["genbench.model"] == model
    assert tags["genbench.dataset"] == "fashion-mnist"
    for key in ("genbench.version", "torch.version", "ray.version", "mlflow.version",
                "hardware.cpu"):
        assert tags.get(key), f"tag {key} missing"

    files = artifact_files(client, run_id)
    grids = [f for f in files if f.startswith(("samples/", "reconstructions/"))
             and f.endswith(".png")]
    assert grids, f"no sample grid among {files}"
    if model != "ae":
        assert any(f.startswith("samples/") for f in grids)
    png = Path(client.download_artifacts(run_id, grids[-1], str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert "checkpoint/checkpoint.pt" in files
    local = client.download_artifacts(run_id, "checkpoint/checkpoint.pt", str(tmp_path))
    payload = ckpt.load(local)
    assert payload["step"] == STEPS and payload["mlflow_run_id"] == run_id
    assert payload["config"]["model"] == model and payload["config"]["train"]["workers"] == 2
    return run_id


@pytest.mark.parametrize("model", ["ae", "vae", "pixelcnn"])
def test_train_in_process(model, family_run, tmp_path):
    """The session's run of the family is this very command, run in-process."""
    run = family_run(model)
    assert run.exit_code == 0
    run_id = check_run(run.uri, run.experiment, model, tmp_path)
    assert run_id == run.run_id
    assert run_id in run.out and f"{STEPS} steps" in run.out       # the summary names the run
    assert f"MLflow run {run_id}" in run.err and "Traceback" not in run.err


@pytest.mark.uses_family("gan")
def test_train_gan_as_a_real_command(family_run, tmp_path):
    """The session's gan run is a real `genbench` process (joined to the session's Ray): exit
    code 0 and a quiet, readable output."""
    run = family_run("gan")
    assert run.exit_code == 0
    run_id = check_run(run.uri, run.experiment, "gan", tmp_path)
    assert f"MLflow run    {run_id}" in run.out
    assert "genbench: training gan on fashion-mnist with 2 worker(s)" in run.err
    # Ray's and MLflow's own logs stay quiet: only genbench's lines and its progress
    noise = [line for line in run.err.splitlines()
             if line.strip() and not line.startswith(("genbench: ", "  step "))]
    assert not noise, "\n".join(noise[:20])

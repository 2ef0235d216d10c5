"""`genbench train --model M --workers 2 --steps 30 --experiment E` for every family: exit 0, one
FINISHED MLflow run with step metrics, params, tags, a sample-grid PNG and the checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import checkpoint as ckpt
from genbench.cli import main

pytestmark = pytest.mark.slow

STEPS = 30
LOSS_KEY = {"ae": "mse", "vae": "bpd", "gan": "d_loss", "pixelcnn": "bpd"}
GENBENCH = [sys.executable, "-m", "genbench"]


def artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def check_run(uri: str, experiment: str, model: str, tmp_path: Path) -> str:
    """Everything the issue asks of a finished train run; returns its id."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, f"expected one run in {experiment}, found {len(runs)}"
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


def test_train_ae(ae_run, tmp_path):
    """The session's ae run is this very command, run in-process."""
    assert ae_run.exit_code == 0
    assert check_run(ae_run.uri, ae_run.experiment, "ae", tmp_path) == ae_run.run_id


@pytest.mark.parametrize("model", ["vae", "pixelcnn"])
def test_train_in_process(model, ray_local, workdir, mlflow_uri, fast_sets, capsys):
    code = main(["train", "--model", model, "--workers", "2", "--steps", str(STEPS),
                 "--experiment", "E", *fast_sets(model)])
    out, err = capsys.readouterr()
    assert code == 0
    run_id = check_run(mlflow_uri, "E", model, workdir / "dl")
    assert run_id in out and f"{STEPS} steps" in out       # the summary names the run
    assert f"MLflow run {run_id}" in err and "Traceback" not in err


def test_train_gan_as_a_real_command(tmp_path, fast_sets):
    """A real `genbench` process (its own Ray): exit code 0 and a quiet, readable output."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = uri
    proc = subprocess.run(
        [*GENBENCH, "train", "--model", "gan", "--workers", "2", "--steps", str(STEPS),
         "--experiment", "E", *fast_sets("gan")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = check_run(uri, "E", "gan", tmp_path / "dl")
    assert f"MLflow run    {run_id}" in proc.stdout
    assert f"genbench: training gan on fashion-mnist with 2 worker(s)" in proc.stderr
    # Ray's and MLflow's own logs stay quiet: only genbench's lines and its progress
    noise = [line for line in proc.stderr.splitlines()
             if line.strip() and not line.startswith(("genbench: ", "  step "))]
    assert not noise, "\n".join(noise[:20])

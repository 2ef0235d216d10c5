"""Bad input: one line `genbench: error: <what is wrong; how to fix it>`, exit code 2, no
traceback, and nothing created or overwritten (no MLflow run, no Ray results, no checkpoint)."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import checkpoint as ckpt
from genbench.cli import main
from pipeline.resume import RUN_DIR_TAG
from pipeline.trainer import list_checkpoints

GENBENCH = [sys.executable, "-m", "genbench"]
TRAIN = ["train", "--experiment", "E", "--steps", "2"]


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_line_error(code, err, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("genbench: error: "), lines[0]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def assert_nothing_created(workdir: Path, uri: str):
    assert not (workdir / "ray_results").exists()
    if Path(uri.removeprefix("sqlite:///")).exists():
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("E")
        assert exp is None or not client.search_runs([exp.experiment_id])


@pytest.fixture
def clean(workdir, mlflow_uri):
    """A fresh working dir and MLflow store; afterwards, check nothing was created in them."""
    yield workdir
    assert_nothing_created(workdir, mlflow_uri)


# --- config and argument errors (no Ray needed) -------------------------------------------

BAD_ARGUMENTS = [
    (["--model", "score-sde"], ["--model", "invalid choice", "'score-sde'", "--help"]),
    (["--model", "ae", "--dataset", "imagenet"], ["unknown dataset 'imagenet'", "fashion-mnist"]),
    (["--model", "ae", "--set", "train.stepz=3"], ["unknown config key train.stepz",
                                                    "known keys"]),
    (["--model", "ae", "--set", "optimizer.lr=3"], ["unknown config section 'optimizer'"]),
    (["--model", "ae", "--set", "ae.lr=0"], ["ae.lr must be positive, got 0"]),
    (["--model", "gan", "--set", "gan.lr_g=-0.001"], ["gan.lr_g must be positive"]),
    (["--model", "ae", "--steps", "0"], ["--steps", "must be positive, got 0"]),
    (["--model", "ae", "--set", "train.steps=-5"], ["train.steps must be positive, got -5"]),
    (["--model", "ae", "--workers", "0"], ["--workers", "must be positive, got 0"]),
    (["--model", "ae", "--workers", "-2"], ["--workers", "must be positive"]),
    (["--model", "ae", "--set", "train.workers=0"], ["train.workers must be positive"]),
    (["--model", "vae", "--set", "vae.beta=-1"], ["vae.beta must be >= 0, got -1"]),
    (["--model", "ae", "--workers", "3"], ["batch size 128 does not divide across 3 workers",
                                           "multiple of 3"]),
    (["--model", "ae", "--set", "train.batch_size=10", "--workers", "4"],
     ["batch size 10 does not divide across 4 workers"]),
    (["--model", "ae", "--set", "train.steps=ten"], ["train.steps must be int"]),
]


@pytest.mark.parametrize("args, needles", BAD_ARGUMENTS,
                         ids=[" ".join(args) for args, _ in BAD_ARGUMENTS])
def test_bad_train_arguments(args, needles, clean, capsys):
    code, err = run_cli([*TRAIN[:3], *args] if "--steps" in args else [*TRAIN, *args], capsys)
    assert_one_line_error(code, err, *needles)


def test_unknown_config_key_in_yaml(clean, capsys):
    (clean / "c.yaml").write_text("model: vae\nvae:\n  betta: 4\n")
    code, err = run_cli([*TRAIN, "--config", str(clean / "c.yaml")], capsys)
    assert_one_line_error(code, err, "unknown config key vae.betta", "beta")


def test_unknown_model_in_yaml(clean, capsys):
    (clean / "c.yaml").write_text("model: nope\n")
    code, err = run_cli([*TRAIN, "--config", str(clean / "c.yaml")], capsys)
    assert_one_line_error(code, err, "unknown model 'nope'", "ae, vae, gan, pixelcnn")


def test_negative_beta_in_yaml(clean, capsys):
    (clean / "c.yaml").write_text("model: vae\nvae:\n  beta: -0.5\n")
    code, err = run_cli([*TRAIN, "--config", str(clean / "c.yaml")], capsys)
    assert_one_line_error(code, err, "vae.beta must be >= 0")


@pytest.mark.parametrize("yaml_text, needle", [
    ("train: 5\n", "config section 'train' must be a mapping"),
    ("data: [1]\n", "config section 'data' must be a mapping"),
    ("model: vae\nvae: x\n", "config section 'vae' must be a mapping"),
    ("train:\n  epochs: .inf\n", "train.epochs must be a finite number, got inf"),
    ("train:\n  checkpoint_min_interval_s: .nan\n",
     "train.checkpoint_min_interval_s must be a finite number"),
])
def test_yaml_section_not_a_mapping_or_not_finite(yaml_text, needle, clean, capsys):
    (clean / "c.yaml").write_text(yaml_text)
    code, err = run_cli([*TRAIN[:3], "--config", str(clean / "c.yaml")], capsys)
    assert_one_line_error(code, err, needle)


def test_missing_config_file(clean, capsys):
    code, err = run_cli([*TRAIN, "--config", str(clean / "nope.yaml")], capsys)
    assert_one_line_error(code, err, "nope.yaml does not exist")


def test_data_missing_while_offline(clean, monkeypatch, offline_torchvision, capsys):
    """MNIST is not on disk and torchvision cannot download it."""
    empty = clean / "data"
    empty.mkdir()
    monkeypatch.setenv("GENBENCH_DATA", str(empty))
    code, err = run_cli([*TRAIN, "--model", "ae", "--dataset", "mnist"], capsys)
    assert_one_line_error(code, err, "dataset 'mnist' is not on disk and could not be "
                          "downloaded", str(empty), "data.root")


# --- errors that need the cluster ----------------------------------------------------------

def test_more_workers_than_cpus(ray_local, clean, capsys):
    code, err = run_cli([*TRAIN, "--model", "ae", "--workers", "64"], capsys)
    assert_one_line_error(code, err, "64 workers", "has 2 CPUs", "lower --workers")


def test_gpu_on_a_cluster_without_gpus(ray_local, clean, capsys):
    code, err = run_cli([*TRAIN, "--model", "ae", "--gpu"], capsys)
    assert_one_line_error(code, err, "GPU", "0 GPUs")


# --- resume errors: the session's finished ae run -------------------------------------------

@pytest.fixture
def finished(ae_run, monkeypatch):
    """The finished ae run, its checkpoint files (newest first), and a guard that nothing
    changed. Tests that need a run --resume accepts mark it KILLED; it is FINISHED again after."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ae_run.uri)
    monkeypatch.chdir(ae_run.workdir)
    client = MlflowClient(ae_run.uri)
    run_dir = client.get_run(ae_run.run_id).data.tags[RUN_DIR_TAG]
    files = [p / ckpt.FILENAME for p in list_checkpoints(run_dir)]
    assert len(files) == 2  # steps 30 and 15
    originals = [f.read_bytes() for f in files]
    dirs_before = sorted(Path(run_dir).parent.iterdir())
    yield ae_run, files
    for f, original in zip(files, originals):
        f.write_bytes(original)  # leave the session's run as it was
    run = client.get_run(ae_run.run_id)
    assert run.info.status != "RUNNING"  # not reopened by a failed resume
    client.set_terminated(ae_run.run_id, "FINISHED")
    assert sorted(Path(run_dir).parent.iterdir()) == dirs_before  # no new Ray run dir


def stopped(finished):
    """The run as a killed driver leaves it (status KILLED), and its newest checkpoint file."""
    run, files = finished
    MlflowClient(run.uri).set_terminated(run.run_id, "KILLED")
    return run, files[0]


@pytest.mark.slow  # reads the session's trained ae run
def test_resume_a_finished_run(finished, capsys):
    run, _ = finished
    code, err = run_cli(["train", "--resume", run.run_id], capsys)
    assert_one_line_error(code, err, f"run {run.run_id} is FINISHED", "nothing to resume")


@pytest.mark.slow  # reads the session's trained ae run
def test_resume_when_no_checkpoint_loads(finished, capsys):
    """Every checkpoint corrupt: one line naming each (a torn newest one alone is skipped, see
    tests/test_fault_tolerance.py)."""
    run, files = finished
    stopped(finished)
    garbage = b"this is not a torch file" * 10
    for f in files:
        f.write_bytes(garbage)
    code, err = run_cli(["train", "--resume", run.run_id], capsys)
    assert_one_line_error(code, err, f"no checkpoint of run {run.run_id} loads",
                          f"{files[0].parent.name} (corrupt), {files[1].parent.name} (corrupt)",
                          "start a new run")
    assert all(f.read_bytes() == garbage for f in files)  # reported, not overwritten


@pytest.mark.slow  # reads the session's trained ae run
def test_resume_checkpoint_whose_pickle_runs_code(finished, tmp_path, capsys):
    from test_checkpoint import RunsCode

    run, files = finished
    stopped(finished)
    marker = tmp_path / "marker"
    for f in files:  # both: --resume would otherwise go on from the one that loads
        payload = ckpt.load(f)
        payload["extra"] = RunsCode(f"open({str(marker)!r}, 'w').write('pwned')")
        torch.save(payload, f)
    code, err = run_cli(["train", "--resume", run.run_id], capsys)
    assert_one_line_error(code, err, f"no checkpoint of run {run.run_id} loads",
                          f"{files[0].parent.name} (corrupt)")
    code, err = run_cli(["eval", "--checkpoint", str(files[0])], capsys)
    assert_one_line_error(code, err, f"checkpoint {files[0]} is corrupt")
    assert not marker.exists()


@pytest.mark.slow  # reads the session's trained ae run
def test_resume_checkpoint_of_a_newer_format(finished, capsys):
    run, latest = stopped(finished)
    payload = ckpt.load(latest)
    payload["format"] = ckpt.FORMAT + 1
    torch.save(payload, latest)
    code, err = run_cli(["train", "--resume", run.run_id], capsys)
    assert_one_line_error(code, err, f"has format version {ckpt.FORMAT + 1}")


@pytest.mark.slow  # reads the session's trained ae run
def test_resume_checkpoint_of_another_run(finished, capsys):
    run, latest = stopped(finished)
    payload = ckpt.load(latest)
    payload["mlflow_run_id"] = "0" * 32
    torch.save(payload, latest)
    code, err = run_cli(["train", "--resume", run.run_id], capsys)
    assert_one_line_error(code, err, f"belongs to run {'0' * 32}", f"not {run.run_id}")


@pytest.mark.slow  # reads the session's trained ae run
def test_resume_checkpoint_with_mismatched_shapes(finished, capsys):
    """The weights no longer fit the saved config (ae.width 8 -> 16)."""
    run, latest = stopped(finished)
    payload = ckpt.load(latest)
    payload["config"]["ae"]["width"] = 16
    torch.save(payload, latest)
    code, err = run_cli(["train", "--resume", run.run_id], capsys)
    assert_one_line_error(code, err, "does not match this model's shapes",
                          "the config it was trained with")


@pytest.mark.slow  # reads the session's trained ae run
def test_resume_checkpoint_of_another_family(finished, capsys):
    run, latest = stopped(finished)
    payload = ckpt.load(latest)
    payload["config"] = {**payload["config"], "model": "gan", "gan": {}}
    del payload["config"]["ae"]
    torch.save(payload, latest)
    code, err = run_cli(["train", "--resume", run.run_id], capsys)
    assert_one_line_error(code, err, "holds networks ['model']", "['discriminator', 'generator']")


def test_resume_unknown_run(clean, capsys):
    code, err = run_cli(["train", "--resume", "f" * 32], capsys)
    assert_one_line_error(code, err, f"no MLflow run '{'f' * 32}'", "MLFLOW_TRACKING_URI")


def test_resume_with_a_new_config(clean, capsys):
    code, err = run_cli(["train", "--resume", "f" * 32, "--set", "ae.lr=1"], capsys)
    assert_one_line_error(code, err, "--resume continues a run with its saved config")


# --- the real command: exit status 2 from the process ---------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--model", "ae", "--set", "train.stepz=3"], "unknown config key train.stepz"),
    (["--model", "ae", "--steps", "0"], "must be positive, got 0"),
    (["--model", "vae", "--set", "vae.lr=nan"], "vae.lr must be a finite number, got 'nan'"),
])
def test_real_exit_code(args, needle, tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = subprocess.run([*GENBENCH, "train", "--experiment", "E", *args], cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, needle)
    assert proc.stdout == ""
    assert_nothing_created(tmp_path, uri)


# --- data that is not what it claims to be (issue 13) ---------------------------------------

def test_empty_folder_as_dataset(clean, capsys):
    (clean / "imgs").mkdir()
    code, err = run_cli([*TRAIN, "--model", "ae", "--dataset", str(clean / "imgs")], capsys)
    assert_one_line_error(code, err, f"no images found under {clean / 'imgs'}",
                          "one sub-folder of images per class")


def write_idx_dataset(folder: Path, n: int = 64) -> None:
    import gzip
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        for kind, shape in (("images-idx3", (n, 28, 28)), ("labels-idx1", (n,))):
            header = struct.pack(">HBB", 0, 8, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + bytes(int(torch.tensor(shape).prod())))


def test_folder_of_idx_files_as_dataset(clean, capsys):
    """A user pointing --dataset at their MNIST copy is told to use --set data.root."""
    write_idx_dataset(clean / "mnist")
    code, err = run_cli([*TRAIN, "--model", "ae", "--dataset", str(clean / "mnist")], capsys)
    assert_one_line_error(code, err, "holds IDX files", "--dataset mnist",
                          f"--set data.root={clean / 'mnist'}")


def test_truncated_idx_file_under_data_root(clean, capsys):
    write_idx_dataset(clean / "fm")
    images = clean / "fm" / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100])
    code, err = run_cli([*TRAIN, "--model", "ae", "--set", f"data.root={clean / 'fm'}"], capsys)
    assert_one_line_error(code, err, f"{images} is truncated or corrupt", "download")


# --- services that do not answer: one line within seconds, never a hang ------------------------

UNREACHABLE = {
    "ray address with nothing listening": (
        ["--address", "127.0.0.1:1"], {},
        ["cannot reach the Ray cluster at 127.0.0.1:1", "connection refused", "ray start",
         "--address"]),
    "unknown tracking uri scheme": (
        [], {"MLFLOW_TRACKING_URI": "bogus://x"},
        ["MLFLOW_TRACKING_URI=bogus://x", "scheme MLflow does not know", "sqlite:///mlflow.db"]),
    "tracking server down": (
        [], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        ["cannot reach the MLflow tracking server at http://127.0.0.1:9", "connection refused",
         "mlflow server"]),
}


@pytest.mark.parametrize("name", list(UNREACHABLE))
def test_unreachable_service_is_one_line_within_30_s(name, tmp_path):
    """The real command, as a user types it: exit 2, one line, no run and no checkpoint."""
    args, env, needles = UNREACHABLE[name]
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
           "MLFLOW_TRACKING_URI": uri, **env}
    start = time.monotonic()
    proc = subprocess.run([*GENBENCH, *TRAIN, "--model", "ae", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert_one_line_error(proc.returncode, proc.stderr, *needles)
    assert elapsed < 30, f"took {elapsed:.0f} s"
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no ray_results, nothing
    assert_nothing_created(tmp_path, uri)


@pytest.mark.parametrize("argv", [["eval", "--run-id", "0" * 32], ["report", "--experiment", "E"],
                                  ["tune", "--model", "ae"], ["bench"],
                                  ["eval", "--run-id", "0" * 32, "--workers", "2"]],
                         ids=lambda a: " ".join(a[:1] + a[3:]))
def test_every_command_checks_its_services_first(argv, clean, monkeypatch, capsys):
    """The same checks guard every command that opens MLflow or Ray."""
    good = os.environ["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "cannot reach the MLflow tracking server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", good)
    if argv[0] in ("tune", "bench") or "--workers" in argv:
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # the environment, not --address
        code, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "cannot reach the Ray cluster at 127.0.0.1:1")


def test_bad_ray_address_form(clean, capsys):
    code, err = run_cli([*TRAIN, "--model", "ae", "--address", "headnode"], capsys)
    assert_one_line_error(code, err, "Ray address 'headnode' is not HOST:PORT")

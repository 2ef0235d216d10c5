"""A config from a checkpoint, an MLflow run or a sweep directory is data, and data never names
code for genbench to import. Each command that reads one is given a config naming
`family_module: family.py`, with a family.py right beside it that writes a marker file when
imported: the real `genbench` process refuses it in one line with exit code 2, and the marker
never appears. None of these commands gets as far as starting Ray.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import checkpoint as ckpt
from pipeline import tracking
from pipeline.config import Config
from pipeline.resume import RUN_DIR_TAG
from tune.spec import SweepSpec, write_marker
from tune.sweep import SWEEP_ID_TAG, TUNE_PATH_TAG

GENBENCH = [sys.executable, "-m", "genbench"]
REFUSED = "config names code to import (family_module: family.py)"


@pytest.fixture
def planted(tmp_path):
    """A working dir with family.py (which would write `imported` when run) and a private
    MLflow store; returns (dir, tracking uri, the config that names the file)."""
    marker = tmp_path / "imported"
    (tmp_path / "family.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = {k: v for k, v in Config.from_dict({"model": "vae"}).to_dict().items() if k != "vae"}
    config = {**raw, "model": "evil", "evil": {}, "family_module": "family.py"}
    return tmp_path, uri, config


def save_checkpoint(directory: Path, config: dict, run_id: str) -> None:
    directory.mkdir(parents=True)
    ckpt.save(directory, {}, {}, 10, config, run_id)


def genbench(workdir: Path, uri: str, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([*GENBENCH, *argv], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_refused(proc: subprocess.CompletedProcess, workdir: Path, needle: str = REFUSED):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("genbench: error: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert not (workdir / "imported").exists(), "family.py was imported"


def test_eval_of_a_checkpoint_never_imports_the_family_its_config_names(planted):
    workdir, uri, config = planted
    save_checkpoint(workdir / "ckpt", config, "0" * 32)
    proc = genbench(workdir, uri, "eval", "--checkpoint", str(workdir / "ckpt"), "--quiet")
    assert_refused(proc, workdir)
    assert "install the family as a package with a `genbench.families` entry point" in \
        proc.stderr


def test_train_resume_never_imports_the_family_its_checkpoint_names(planted):
    workdir, uri, config = planted
    run_dir = workdir / "ray_results" / "train-evil"
    run_id = tracking.start_run("E", "train-evil", {}, {"genbench.kind": "train",
                                                        RUN_DIR_TAG: str(run_dir)}, uri=uri)
    save_checkpoint(run_dir / "checkpoint_000000010", config, run_id)
    proc = genbench(workdir, uri, "train", "--resume", run_id)
    assert_refused(proc, workdir)


def planted_sweep(workdir: Path, uri: str, config: dict) -> tuple[Path, str]:
    """A sweep directory as genbench writes one (spec, marker, a parent run that points back
    at it), whose spec carries the planted config."""
    parent = tracking.start_run("E", "tune-evil", {}, {"genbench.kind": "tune"}, uri=uri)
    sweep_dir = workdir / "ray_results" / f"tune-evil-{parent[:12]}"
    sweep_dir.mkdir(parents=True)
    write_marker(sweep_dir, parent)
    SweepSpec(user_config=config, trial_config=config, space={"evil.lr": {"uniform": [0, 1]}},
              metric="val_loss", mode="min", scheduler="fifo", search="random", samples=2,
              steps=4, interval=2, experiment="E", tracking_uri=uri, fid_samples=10,
              parent_run_id=parent, name=sweep_dir.name, sweep_dir=str(sweep_dir)
              ).save(sweep_dir)
    tracking.set_tags(parent, {TUNE_PATH_TAG: str(sweep_dir), SWEEP_ID_TAG: parent}, uri)
    return sweep_dir, parent


def test_tune_resume_never_imports_the_family_its_sweep_spec_names(planted):
    workdir, uri, config = planted
    sweep_dir, _ = planted_sweep(workdir, uri, config)
    proc = genbench(workdir, uri, "tune", "--resume", str(sweep_dir))
    assert_refused(proc, workdir)

    # without the marker genbench writes, the directory is refused before its spec is read
    (sweep_dir / "genbench_sweep.id").unlink()
    proc = genbench(workdir, uri, "tune", "--resume", str(sweep_dir))
    assert_refused(proc, workdir, "has no genbench_sweep.id marker")

"""The sweep spec is a typed dataclass that round-trips through JSON (what --resume reads)."""
import json
from pathlib import Path

import pytest

from pipeline.config import Config
from pipeline.errors import ConfigError
from tune.spec import SPEC_FILE, SweepSpec


def make_spec() -> SweepSpec:
    cfg = Config.from_dict({"model": "vae", "vae": {"width": 8}, "train": {"steps": 40}})
    trial = Config.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"],
                                                         "log_every": 4}})
    return SweepSpec(user_config=cfg.to_dict(), trial_config=trial.to_dict(),
                     space={"vae.beta": {"loguniform": [0.1, 10.0]}}, metric="val_bpd",
                     mode="min", scheduler="asha", search="random", samples=4, steps=40,
                     interval=4, experiment="E", tracking_uri="sqlite:///m.db",
                     fid_samples=500, max_concurrent=2, parent_run_id="abc",
                     name="tune-vae-abc", sweep_dir="/tmp/tune-vae-abc")


def test_spec_round_trips_through_json(tmp_path):
    spec = make_spec()
    spec.save(tmp_path)
    back = SweepSpec.load(tmp_path)
    assert back == spec
    assert back.user() == spec.user() and back.trial().train.log_every == 4
    assert (back.model, back.dataset, back.keys, back.workers) == ("vae", "fashion-mnist",
                                                                   ["vae.beta"], 1)
    assert json.loads((tmp_path / SPEC_FILE).read_text())["metric"] == "val_bpd"


def test_a_spec_from_another_version_is_a_one_line_error(tmp_path):
    raw = json.loads(make_spec().to_json())
    with pytest.raises(ConfigError, match="another genbench version"):
        SweepSpec.from_json(json.dumps({**raw, "max_concurent": 3}))
    del raw["metric"]
    with pytest.raises(ConfigError, match="incomplete"):
        SweepSpec.from_json(json.dumps(raw))


# --- --resume trusts only a directory genbench wrote for a sweep in the user's store -----------

def opened_sweep(tmp_path) -> SweepSpec:
    """What `genbench tune` does before Ray starts trials: the parent run, the sweep dir with
    its spec and marker."""
    from tune.sweep import open_sweep

    spec = make_spec()
    user = {**spec.user_config, "train": {**spec.user_config["train"],
                                          "storage_path": str(tmp_path / "results")}}
    return open_sweep(spec.replace(user_config=user, tracking_uri=tracking_uri()))


def tracking_uri() -> str:
    from pipeline import tracking
    return tracking.tracking_uri()


def test_a_sweep_genbench_opened_is_trusted(tmp_path, mlflow_uri):
    from tune.spec import MARKER_FILE
    from tune.sweep import trusted_sweep

    spec = opened_sweep(tmp_path)
    sweep_dir = Path(spec.sweep_dir)
    assert (sweep_dir / MARKER_FILE).read_text().strip() == spec.parent_run_id
    assert trusted_sweep(str(sweep_dir)) == (sweep_dir, spec.parent_run_id)


def test_resume_refuses_a_directory_genbench_did_not_write_here(tmp_path, mlflow_uri,
                                                                 monkeypatch, capsys):
    """A copy of a real sweep dir, one without the marker, and one whose run is in another
    store: each one line and exit 2, before Tune's pickled state is touched or Ray starts."""
    import shutil

    from genbench.cli import main
    from tune.spec import MARKER_FILE

    spec = opened_sweep(tmp_path)
    copy = tmp_path / "elsewhere" / Path(spec.sweep_dir).name
    shutil.copytree(spec.sweep_dir, copy)
    unmarked = tmp_path / "unmarked"
    shutil.copytree(spec.sweep_dir, unmarked)
    (unmarked / MARKER_FILE).unlink()
    capsys.readouterr()   # MLflow's own lines while the store was created

    def refused(path, *needles):
        assert main(["tune", "--resume", str(path)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("genbench: error: "), lines
        for needle in needles:
            assert needle in lines[0], lines[0]

    refused(copy, f"sweep {spec.parent_run_id} ran in {spec.sweep_dir}, not {copy}")
    refused(unmarked, f"has no {MARKER_FILE} marker", "resume only sweeps you ran yourself")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    refused(spec.sweep_dir, f"names sweep {spec.parent_run_id}, which is not a sweep's parent "
                            f"run in your tracking store", "resume only sweeps you ran yourself")

"""The sweep spec is a typed dataclass that round-trips through JSON (what --resume reads)."""
import json

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

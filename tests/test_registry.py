"""The family registry: one line per family, the contract checked on first use, and a
registration that travels with the config to processes that never ran it."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import models
from pipeline.config import Config
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def registry_as_it_was():
    """Families a test registers leave with it."""
    before = set(models.names())
    yield
    for name in set(models.names()) - before:
        models.unregister(name)


def write_family(path: Path, extra: str = "") -> Path:
    """A minimal family module (an AE-like identity with no sampler and no likelihood)."""
    path.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import torch
        from torch import nn

        @dataclass(frozen=True)
        class Config:
            lr: float = 0.1

        PHASES = ("model",)
        PROGRESS_KEYS = ("mse",)
        TUNE_SPACE = {"lr": {"loguniform": [0.01, 1.0]}}
        SWEEP_METRIC, SWEEP_MODE = "val_mse", "min"
        LIKELIHOOD = None
        LIKELIHOOD_NOTE = "none: a test double"
        GRID_SIZE = 4
        DDP_OPTIONS = {}

        def build(cfg, image_shape, num_classes):
            return {"model": nn.Linear(1, 1)}

        def make_optimizers(cfg, nets):
            return {"model": torch.optim.SGD(nets["model"].parameters(), lr=cfg.lr)}

        def loss(cfg, nets, x, y, phase):
            out = nets["model"](x.float().mean((1, 2, 3))[:, None]).pow(2).mean()
            return {"loss": out, "mse": out.detach()}
    ''') + textwrap.dedent(extra))
    return path


def test_a_config_carries_its_family_to_a_process_that_never_registered_it(tmp_path):
    path = write_family(tmp_path / "plugin_family.py")
    models.register("plugin", str(path))
    saved = Config.from_dict({"model": "plugin", "plugin": {"lr": 0.5}}).to_dict()
    assert saved["family_module"] == str(path)
    assert "family_module" not in Config.from_dict({"model": "vae"}).to_dict()  # built in
    code = ("import json, sys; from pipeline.config import Config; "
            "cfg = Config.from_dict(json.loads(sys.argv[1])); "
            "print(cfg.model, cfg.family.lr, type(cfg.family).__module__)")
    import json
    out = subprocess.run([sys.executable, "-c", code, json.dumps(saved)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["plugin", "0.5", "genbench_family_plugin_family"]


def test_a_name_cannot_be_taken_twice(tmp_path):
    with pytest.raises(ValueError, match="already registered"):
        models.register("vae", str(write_family(tmp_path / "other_vae.py")))
    models.register("vae", "pipeline.models.vae")   # the same pair again: a no-op


def test_the_contract_is_checked_on_first_use(tmp_path):
    lacking = tmp_path / "lacking.py"
    lacking.write_text("PHASES = ('model',)\n")
    models.register("lacking", str(lacking))
    with pytest.raises(TypeError, match="lacks Config, PROGRESS_KEYS"):
        models.get("lacking")
    liar = write_family(tmp_path / "liar.py", "LIKELIHOOD = 'exact'\n")   # but no nll()
    models.register("liar", str(liar))
    with pytest.raises(TypeError, match="disagrees with lacking nll"):
        models.get("liar")


def test_a_family_that_cannot_be_imported_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot import .*ghost.py"):
        Config.from_dict({"model": "ghost", "family_module": str(tmp_path / "ghost.py")})
    assert "ghost" not in models.names()   # nothing left registered

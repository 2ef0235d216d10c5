"""The family registry: one name per built-in family, the contract checked on first use,
families of one's own through register() (this process) or an installed package's
`genbench.families` entry point (every process), and never a module named by a config."""
import json
import os
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


def test_a_config_names_its_family_never_its_module(tmp_path):
    path = write_family(tmp_path / "plugin_family.py")
    models.register("plugin", str(path))
    cfg = Config.from_dict({"model": "plugin", "plugin": {"lr": 0.5}})
    saved = cfg.to_dict()
    assert saved["model"] == "plugin" and saved["plugin"] == {"lr": 0.5}
    assert "family_module" not in saved and str(path) not in json.dumps(saved)
    assert Config.from_dict(saved) == cfg     # this process knows the family by its name


def install_fake_package(site: Path, entry_points: str, module: str = "plugin_family") -> Path:
    """A distribution on a sys.path entry, as pip leaves one: the module and a .dist-info
    with METADATA and entry_points.txt (what importlib.metadata reads)."""
    site.mkdir(parents=True)
    write_family(site / f"{module}.py")
    info = site / "plugin_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return site


def in_fresh_process(code: str, site: Path | None = None) -> subprocess.CompletedProcess:
    """Python in a new process (like a Ray worker: it never ran this test's register())."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site) if site else "", str(ROOT)) if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_an_installed_entry_point_finds_the_family_in_every_process(tmp_path):
    site = install_fake_package(tmp_path / "site", """
        [genbench.families]
        plugin = plugin_family
        vae = plugin_family
        """)
    out = in_fresh_process("""
        import json, warnings
        from pipeline import models
        from pipeline.config import Config
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = models.names()
        cfg = Config.from_dict({"model": "plugin", "plugin": {"lr": 0.5}})
        print(json.dumps({"names": names, "lr": cfg.family.lr,
                          "module": models.get("plugin").__name__,
                          "source": models.module_path("plugin"),
                          "entry": models.from_entry_point("plugin"),
                          "vae": models.get("vae").__name__,
                          "warnings": [str(w.message) for w in caught]}))
        """, site)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert "plugin" in got["names"] and got["lr"] == 0.5 and got["entry"]
    assert got["module"] == "plugin_family"
    assert got["source"] == "plugin_family (entry point of plugin-pkg)"
    # a built-in's name cannot be taken over by a package, and the user is told
    assert got["vae"] == "pipeline.models.vae"
    (warning,) = got["warnings"]
    assert "family 'vae' of plugin_family" in warning and "taken by pipeline.models.vae" in warning


def test_without_the_package_another_process_does_not_know_the_family(tmp_path):
    models.register("plugin", str(write_family(tmp_path / "plugin_family.py")))
    out = in_fresh_process("""
        from pipeline.config import Config
        from pipeline.errors import ConfigError
        try:
            Config.from_dict({"model": "plugin"})
        except ConfigError as exc:
            print(exc)
        """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("unknown model 'plugin'; use one of ae, vae")
    assert "genbench.families` entry point" in out.stdout


def test_an_entry_point_that_cannot_be_imported_is_a_one_line_config_error(tmp_path):
    site = install_fake_package(tmp_path / "site", """
        [genbench.families]
        broken = no_such_module_here
        """)
    out = in_fresh_process("""
        from pipeline.config import Config
        from pipeline.errors import ConfigError
        try:
            Config.from_dict({"model": "broken"})
        except ConfigError as exc:
            print(exc)
        """, site)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("family broken: cannot import no_such_module_here (entry "
                                 "point of plugin-pkg)")


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


@pytest.mark.parametrize("named", ["file", "module"])
def test_a_config_that_names_code_is_refused_and_the_code_never_runs(tmp_path, named):
    """A checkpoint's or run's config is data: the module it names is never imported, even
    where the file is right there, and nothing is registered."""
    marker = tmp_path / "ran"
    evil = write_family(tmp_path / "evil_family.py", f"open({str(marker)!r}, 'w').close()\n")
    module = str(evil) if named == "file" else "evil_family"
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConfigError) as err:
            Config.from_dict({"model": "evil", "family_module": module})
    finally:
        sys.path.remove(str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"config names code to import (family_module: {module}); "
                              f"genbench never imports code named by a config")
    assert "genbench.families` entry point" in message and "\n" not in message
    assert not marker.exists() and "evil_family" not in sys.modules
    assert "evil" not in models.names()
    # a built-in family gets no pass either: the key itself is refused
    with pytest.raises(ConfigError, match="config names code to import"):
        Config.from_dict({"model": "vae", "family_module": "pipeline.models.vae"})

"""How the suite runs on pytest-xdist workers (pyproject: -n 2 --dist loadgroup); tests/conftest.py
imports these hooks.

Each worker is a pytest process with its own session: its own local Ray (ray_local), its own
trained family runs (family_run). Tests go to the workers in units, and a unit runs whole on one
worker:

- the tests that read the session's trained run of a family: one unit per family ("family-vae"),
  so each run is trained once;
- the tests of a module with a module-scoped fixture (other than CHEAP_MODULE_FIXTURES): one
  unit per module, so the fixture is built once;
- every other test: a unit of its own.

Units start longest first (LONGEST_FIRST, measured with `-p testing.unit_durations`), so that
neither worker is left alone with a long unit at the end.

xdist's own loadgroup (xdist_group marks) cannot do this with pytest >= 9.2 (it rewrites a node
id attribute that pytest no longer reads), so the workers write each test's unit to a file and
UnitScheduling, xdist's loadscope scheduler with units for scopes, reads it. Without xdist, or
with -n 0, only the order applies."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

UNITS_KEY = "genbench_units_file"     # workerinput key: where the workers write the units
CHEAP_MODULE_FIXTURES = {"one_torch_thread"}
# Units (a unit's name, or the start of a test's node id), longest first, with the seconds each
# took on 2 xdist workers of a 2-core machine. Units not named here run after these, in file order.
LONGEST_FIRST: list[str] = [  # seconds on 2 workers of a 2-core machine, 2026-12-04
    "tests/test_bench.py::test_bench_with",                           # 308
    "test_cluster",                                                   # 164
    "tests/test_launch.py::test_lost_tracking_server",                # 96
    "tests/test_tune.py::test_two_worker_trials",                     # 78
    "test_ood_cli",                                                   # 77
    "tests/test_launch.py::test_ctrl_c",                              # 76
    "test_toy_family",                                                # 56
    "tests/test_tune.py::test_interrupted_sweep",                     # 51
    "family-pixelcnn",                                                # 49
    "tests/test_fault_tolerance.py::test_resume_an_interrupted_run",  # 46
    "tests/test_fault_tolerance.py::test_killed_worker",              # 46
    "tests/test_transformer.py::test_cli_trains",                     # 45
    "family-gan",                                                     # 37
    "test_report",                                                    # 35
    "family-ae",                                                      # 27
    "test_eval_samples",                                              # 24
    "tests/test_tune.py::test_gan_sweep",                             # 24
    "tests/test_tune.py::test_vae_sweep",                             # 21
    "test_eval_cli",                                                  # 21
    "test_likelihood",                                                # 20
    "test_loop_ddp",                                                  # 19
    "family-vae",                                                     # 16
    "test_loop",                                                      # 15
]


def family_of(item) -> str:
    """The family whose session run a family_run test reads: ae_run's, the test's model/family
    parameter, or its uses_family mark."""
    if "ae_run" in item.fixturenames:
        return "ae"
    params = getattr(getattr(item, "callspec", None), "params", {})
    for key in ("model", "family"):
        if key in params:
            return params[key]
    mark = item.get_closest_marker("uses_family")
    assert mark is not None, f"{item.nodeid} reads family_run: give it @pytest.mark.uses_family"
    return mark.args[0]


def unit_of(item) -> str:
    if "family_run" in item.fixturenames:
        return f"family-{family_of(item)}"
    info = getattr(item, "_fixtureinfo", None)
    for name, fixturedefs in (info.name2fixturedefs.items() if info else ()):
        if name not in CHEAP_MODULE_FIXTURES and any(d.scope in ("module", "class")
                                                      for d in fixturedefs):
            return item.module.__name__
    return item.nodeid


def rank(unit: str) -> int:
    for i, name in enumerate(LONGEST_FIRST):
        if unit == name or unit.startswith(name):
            return i
    return len(LONGEST_FIRST)


def pytest_configure(config):
    config.addinivalue_line("markers", "uses_family(name): the test reads the session's trained "
                            "run of that family (family_run); its xdist unit is that family's")
    if not hasattr(config, "workerinput"):   # the controller (or a run without xdist)
        config.genbench_units_file = str(Path(tempfile.mkdtemp(prefix="genbench-units-"))
                                         / "units.json")


def pytest_unconfigure(config):
    if hasattr(config, "genbench_units_file"):
        shutil.rmtree(Path(config.genbench_units_file).parent, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    units = {item.nodeid: unit_of(item) for item in items}
    items.sort(key=lambda item: rank(units[item.nodeid]))  # stable: the same on every worker
    path = getattr(config, "workerinput", {}).get(UNITS_KEY)
    if path is None and not hasattr(config, "workerinput"):
        path = config.genbench_units_file                 # -n 0: for unit_durations
    if path:
        tmp = f"{path}.{os.getpid()}"
        Path(tmp).write_text(json.dumps({item.nodeid: units[item.nodeid] for item in items}))
        os.replace(tmp, path)  # every worker writes the same content


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput[UNITS_KEY] = node.config.genbench_units_file


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        """loadscope with the workers' units for scopes, in the workers' (sorted) order."""

        units: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.units is None:  # first asked once every worker has collected
                self.units = json.loads(Path(config.genbench_units_file).read_text())
            return self.units.get(nodeid, nodeid)

    config.option.loadscopereorder = False  # keep LONGEST_FIRST's order
    return UnitScheduling(config, log)


def load_units(config) -> dict[str, str]:
    """nodeid -> unit, as the workers (or this process, without xdist) wrote them."""
    path = getattr(config, "genbench_units_file", None)
    try:
        return json.loads(Path(path).read_text()) if path else {}
    except FileNotFoundError:
        return {}

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
LONGEST_FIRST: list[str] = [  # seconds per unit: make test's on 2 quiet cores (2026-12-07,
    # `-p testing.unit_durations`, units of 10 s and more), then make test-faults' (quiet,
    # 2026-12-06/07). Only the order matters.
    "tests/test_bench.py::test_bench_with_two_seeds_and_two_workers",   # 342
    "test_ood_cli",                                                     # 177
    "test_object_storage",                                              # 170
    "tests/test_benchmarks.py::test_tune_overhead",                     # 163
    "test_toy_family",                                                  # 145
    "tests/test_tune.py::test_two_worker_trials_searched_by_optuna",    # 125
    "family-pixelcnn",                                                  # 121
    "test_cas",                                                         # 106
    "tests/test_loopback.py::test_local_ray_of_a_train_run_listens_on", # 98
    "tests/test_transformer.py::test_cli_trains_on_two_workers_and_ev", # 97
    "family-gan",                                                       # 89
    "family-vae",                                                       # 86
    "tests/test_benchmarks.py::test_worker_overhead",                   # 84
    "tests/test_diffusion.py::test_cli_trains_a_conditional_model_the", # 83
    "tests/test_benchmarks.py::test_train_throughput",                  # 64
    "family-ae",                                                        # 63
    "test_report",                                                      # 58
    "tests/test_flow.py::test_cli_trains_a_conditional_flow_that_eval", # 58
    "tests/test_tune.py::test_gan_sweep_over_learning_rates_on_domain", # 57
    "test_loop",                                                        # 55
    "tests/test_tune.py::test_vae_sweep_records_parent_children_and_b", # 53
    "tests/test_fault_tolerance.py::test_checkpoints_sooner_than_the_", # 47
    "test_likelihood",                                                  # 46
    "test_loop_ddp",                                                    # 45
    "test_eval_cli",                                                    # 42
    "tests/test_cache_concurrency.py::test_two_evals_at_once_on_a_fre", # 42
    "tests/test_kuberay.py::test_the_mlflow_pod_serves_only_with_the_", # 29
    "tests/test_progress.py::test_poster_throttles_but_keeps_validati", # 26
    "test_eval_samples",                                                # 24
    "tests/test_untrusted_config.py::test_tune_resume_never_imports_t", # 23
    "tests/test_benchmarks.py::test_ood_check",                         # 22
    "tests/test_cache_concurrency.py::test_processes_that_miss_at_onc", # 22
    "tests/test_loop.py::test_rank0_decides_for_every_rank",            # 20
    "tests/test_untrusted_config.py::test_eval_of_a_checkpoint_never_", # 18
    "test_significance_report",                                         # 17
    "tests/test_untrusted_config.py::test_train_resume_never_imports_", # 14
    "tests/test_likelihood.py::test_eval_never_imports_ray",            # 12
    "tests/test_bench_workers.py::test_gpu_without_a_gpu_is_one_line_", # 11
    "tests/test_warm.py::test_a_warm_run_leaves_the_record_of_a_ray_t",  # 67 (-n 0)
    "tests/test_ood.py::test_the_ood_and_bayes_modules_never_import_r", # 10
    "test_cluster",                                                     # 290
    "tests/test_tune_packing.py::test_packing_runs_two_half_gpu_tri",   # 180 (est.)
    "tests/test_benchmarks.py::test_startup",                           # 120 (est.)
    "tests/test_launch.py::test_tracking_server_down_for_90_s_is_wa",   # 178
    "tests/test_launch.py::test_lost_tracking_server_past_the_budge",   # 159
    "tests/test_fault_tolerance.py::test_stalled_rank_restarts_the_",   # 123
    "tests/test_tune.py::test_interrupted_sweep_resumes_without_rer",   # 102
    "tests/test_fault_tolerance.py::test_resume_an_interrupted_run_",   # 90
    "tests/test_launch.py::test_ctrl_c",                                # 76
    "tests/test_fault_tolerance.py::test_driver_killed_at_a_random_",   # 100
    "test_signals",                                                     # 60
    "tests/test_warm.py::test_a_slot_killed_mid_run_hands_it_to_ray_",  # ~150 (-n 0)
    "tests/test_warm.py::test_sigterm_stops_a_bench_whose_run_trains",  # 57 (-n 0)
    "tests/test_fault_tolerance.py::test_worker_killed_before_the_f",   # 50
    "tests/test_fault_tolerance.py::test_killed_worker",                # 46
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

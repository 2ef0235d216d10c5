"""pytest plugin: how long each xdist unit of the suite took (tests/conftest.py groups the tests
into units), to keep conftest's LONGEST_FIRST in order:

    python -m pytest -p testing.unit_durations

prints the units, longest first, with their seconds (setup + call + teardown of their tests) and
the worker that ran them, at the end of the run; GENBENCH_UNIT_DURATIONS=FILE also writes them
to FILE as JSON."""
from __future__ import annotations

import json
import os
from collections import defaultdict

import pytest

_seconds: dict[str, float] = defaultdict(float)
_worker: dict[str, str] = {}


_seconds_by_test: dict[str, float] = defaultdict(float)


@pytest.hookimpl
def pytest_runtest_logreport(report):
    if getattr(report, "duration", None) is None:
        return
    _seconds_by_test[report.nodeid] += report.duration
    node = getattr(report, "node", None)
    if node is not None:
        _worker[report.nodeid] = node.gateway.id


@pytest.hookimpl
def pytest_terminal_summary(terminalreporter, config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    from testing.xdist_units import load_units

    units = load_units(config)
    for nodeid, seconds in _seconds_by_test.items():
        unit = units.get(nodeid, nodeid)
        _seconds[unit] += seconds
        _worker[unit] = _worker.get(nodeid, "")
    rows = sorted(_seconds.items(), key=lambda kv: -kv[1])
    terminalreporter.write_sep("=", "seconds per xdist unit")
    for unit, seconds in rows[:40]:
        terminalreporter.write_line(f"{seconds:8.1f}  {_worker.get(unit, ''):5}  {unit}")
    total = sum(_seconds.values())
    terminalreporter.write_line(f"{total:8.1f}  total over {len(rows)} units")
    path = os.environ.get("GENBENCH_UNIT_DURATIONS")
    if path:
        with open(path, "w") as f:
            json.dump({u: round(s, 2) for u, s in rows}, f, indent=1)

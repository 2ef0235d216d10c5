"""GENBENCH_FAULT parsing (pipeline/faults.py); the faults themselves fire in
tests/test_fault_tolerance.py."""
import pytest

from genbench.cli import main
from pipeline.errors import ConfigError
from pipeline.faults import ENV, Fault, parse


def test_parse():
    assert parse(None) is None and parse("") is None
    assert parse("rank=1,step=150,action=kill") == Fault(rank=1, step=150, action="kill")
    assert parse("rank=0, step=40, action=pause, seconds=2.5") == \
        Fault(rank=0, step=40, action="pause", seconds=2.5)
    for bad in ("rank=1", "rank=1,step=x", "rank=1,step=5,action=explode", "rank=-1,step=5",
                "rank=1,step=5,when=now", "kill"):
        with pytest.raises(ConfigError, match="GENBENCH_FAULT"):
            parse(bad)


def test_bad_fault_is_one_line_before_anything_starts(workdir, mlflow_uri, monkeypatch, capsys):
    monkeypatch.setenv(ENV, "rank=1,step=soon")
    assert main(["train", "--model", "ae", "--steps", "2", "--experiment", "E"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genbench: error: GENBENCH_FAULT=")
    assert not (workdir / "ray_results").exists()

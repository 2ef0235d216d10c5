"""pipeline.tracking.RunLogger: queued writes reach MLflow in order, timestamps are the loop's,
and a restarted worker group logs each (metric, step) once. Real sqlite MLflow store."""
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.tracking import RunLogger


@pytest.fixture
def run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    return uri, tracking.start_run("logger", "r", {}, {}, uri=uri)


def history(uri, run_id, key):
    return sorted((m.step, m.value, m.timestamp)
                  for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_queued_points_and_files_are_written_on_flush(run, tmp_path):
    uri, run_id = run
    logger = RunLogger(run_id, uri)
    logger.metrics({"a": 1.0, "b": 2.0}, step=10, timestamp=1000.0)
    logger.figure_png(b"\x89PNG not really", "samples/step_0000010.png")
    src = tmp_path / "ckpt.pt"
    src.write_bytes(b"weights")
    logger.artifact(src, "checkpoint")
    src.unlink()  # the logger read it when queued: the caller may delete it at once
    logger.flush()
    assert history(uri, run_id, "a") == [(10, 1.0, 1_000_000)]  # the loop's time, not the write's
    assert tracking.list_artifacts(run_id, "samples", uri) == ["samples/step_0000010.png"]
    assert tracking.list_artifacts(run_id, "checkpoint", uri) == ["checkpoint/ckpt.pt"]
    logger.close()
    logger.close()  # harmless twice


def test_restarted_group_logs_each_point_once(run):
    """The first group logged steps 10..40 and checkpointed at 20; the restarted group repeats
    30 and 40 (other values: images_per_s never repeats), then goes on to 60."""
    uri, run_id = run
    first = RunLogger(run_id, uri)
    for step in (10, 20, 30, 40):
        first.metrics({"loss": step, "images_per_s": 100.0}, step)
    first.close()
    second = RunLogger(run_id, uri, restarted=True)
    for step in (30, 40, 50, 60):
        second.metrics({"loss": step + 0.5, "images_per_s": 90.0}, step)
    second.close()
    assert [(s, v) for s, v, _ in history(uri, run_id, "loss")] == \
        [(10, 10), (20, 20), (30, 30), (40, 40), (50, 50.5), (60, 60.5)]
    assert [s for s, _, _ in history(uri, run_id, "images_per_s")] == [10, 20, 30, 40, 50, 60]


def test_write_errors_reach_the_loop(tmp_path):
    """A run that does not exist: the failed write is raised by every later flush (the loop's
    and the checkpoint upload thread's: neither may miss it because the other saw it first),
    and close() does not raise it once more."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking.start_run("logger", "r", {}, {}, uri=uri)
    logger = RunLogger("0" * 32, uri)
    logger.RETRIES = 1
    logger.metrics({"a": 1.0}, step=1)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="logging to MLflow run 0+ failed"):
            logger.flush()
    with pytest.raises(RuntimeError, match="logging to MLflow run 0+ failed"):
        logger.metrics({"a": 2.0}, step=2)
    logger.close()


# --- outages: the spool (pipeline/spool.py) and `genbench tracking replay` ----------------------
def closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # closed again when this returns: nothing listens there


@pytest.fixture
def no_http_retries(monkeypatch):
    """Each MLflow call to a dead server fails at once instead of after ~6 s of MLflow's own
    retries: the outage budget, not MLflow, decides how long a test waits."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def test_an_outage_past_the_budget_leaves_a_spool_that_replays_once(run, tmp_path, capsys,
                                                                     no_http_retries):
    """A logger whose server never answers: past its budget every call raises one error that
    names the spool and the replay command; the spool holds what was queued, in order, files
    included, and `genbench tracking replay` sends it into the run, leaving out a point the run
    already holds, then deletes it."""
    from genbench.cli import main
    from pipeline.spool import Spool

    uri, run_id = run
    dead = f"http://127.0.0.1:{closed_port()}"
    logger = RunLogger(run_id, dead, outage_s=1.0, spool_root=tmp_path / "spool")
    logger.metrics({"loss": 1.0, "images_per_s": 5.0}, step=10, timestamp=1000.0)
    logger.figure_png(b"\x89PNG grid", "samples/step_0000010.png")
    logger.metrics({"loss": 2.0, "images_per_s": 6.0}, step=20, timestamp=1001.0)
    with pytest.raises(RuntimeError, match="unreachable for 1 s") as raised:
        logger.flush()
    directory = tmp_path / "spool" / run_id
    assert f"kept in {directory}: when it is back, genbench tracking replay {directory}" \
        in str(raised.value)
    with pytest.raises(RuntimeError, match="genbench tracking replay"):
        logger.metrics({"loss": 3.0}, step=30)   # the loop hears it too
    logger.close()
    spool = Spool(directory)
    assert [list(r) for r in spool.pending()] == [["metrics"], ["file", "blob"], ["metrics"]]
    assert spool.blob(spool.pending()[1]) == b"\x89PNG grid"

    # The run already holds loss at step 20 (e.g. a restarted group wrote it): kept, not doubled.
    MlflowClient(uri).log_metric(run_id, "loss", 2.5, timestamp=5, step=20)
    assert main(["tracking", "replay", str(directory), "--tracking-uri", uri]) == 0
    assert f"replayed 3 record(s) into MLflow run {run_id}" in capsys.readouterr().out
    assert [(s, v) for s, v, _ in history(uri, run_id, "loss")] == [(10, 1.0), (20, 2.5)]
    assert [s for s, _, _ in history(uri, run_id, "images_per_s")] == [10, 20]
    assert tracking.list_artifacts(run_id, "samples", uri) == ["samples/step_0000010.png"]
    assert not directory.exists()
    assert main(["tracking", "replay", str(directory)]) == 2   # gone: one line, exit 2
    assert "no spool directory" in capsys.readouterr().err


def test_end_run_past_the_budget_is_spooled_and_replay_sets_it(run, tmp_path, monkeypatch,
                                                               capsys, no_http_retries):
    """The driver's last write: past the budget TrackingLost (one line for the CLI, exit 1)
    names the spool; replaying it ends the run with the status it was meant to get. Errors that
    are not outages (an unknown run) are raised at once, as before."""
    from genbench.cli import main

    uri, run_id = run
    monkeypatch.setenv("GENBENCH_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setenv(tracking.OUTAGE_ENV, "0")
    dead = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(tracking.TrackingLost, match="its end \\(FINISHED\\) is kept in") as lost:
        tracking.end_run(run_id, "FINISHED", dead)
    assert lost.value.exit_code == 1 and "\n" not in str(lost.value)
    assert tracking.spool_hint(run_id).endswith(
        f"genbench tracking replay {tmp_path / 'spool' / run_id}")
    assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"
    monkeypatch.delenv("GENBENCH_SPOOL")   # the command takes the folder of spools, too
    assert main(["tracking", "replay", str(tmp_path / "spool"), "--tracking-uri", uri]) == 0
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    assert not (tmp_path / "spool" / run_id).exists()

    with pytest.raises(Exception) as other:   # not an outage: no waiting, nothing spooled
        tracking.end_run("0" * 32, "FINISHED", uri, budget_s=600)
    assert not isinstance(other.value, tracking.TrackingLost)


def test_outage_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(tracking.OUTAGE_ENV, "soon")
    with pytest.raises(tracking.ConfigError, match="GENBENCH_TRACKING_OUTAGE_S='soon' must be"):
        tracking.outage_budget()
    monkeypatch.setenv(tracking.OUTAGE_ENV, "42")
    assert tracking.outage_budget() == 42
    monkeypatch.delenv(tracking.OUTAGE_ENV)
    assert tracking.outage_budget() == tracking.DEFAULT_OUTAGE_S


def test_reads_wait_out_an_outage_for_the_budget_only(run, no_http_retries):
    uri, run_id = run
    tracking.set_tags(run_id, {"k": "v"}, uri)
    assert tracking.run_tags(run_id, uri)["k"] == "v"
    dead = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(tracking.TrackingLost, match="unreachable for 1 s .* while reading run"):
        tracking.run_tags(run_id, dead, budget_s=1)

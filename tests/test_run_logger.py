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

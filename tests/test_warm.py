"""Warm slots (pipeline/warm.py): a bench's single-worker run trains in a long-lived actor and
leaves the same record as under Ray Train (the same numbers, one point per logged step, the
checkpoints in Ray's layout); a slot that dies hands its run to Ray Train from its checkpoint."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import schema
from pipeline.config import Config
from pipeline.launch import train
from pipeline.warm import SlotPool
from testing.evalkit import tiny_size

pytestmark = pytest.mark.slow

STEPS, LOG_EVERY = 40, 10


def tiny_ae(**train_over) -> Config:
    return Config.from_dict({"model": "ae", "ae": tiny_size("ae"), "train": {
        "steps": STEPS, "batch_size": 16, "log_every": LOG_EVERY, "eval_every": 20,
        "checkpoint_every": 20, "checkpoint_min_interval_s": 0, **train_over}})


def points(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def checkpoints(run_dir) -> list[str]:
    return sorted(p.name for p in Path(run_dir).glob("checkpoint_*") if p.is_dir())


def test_a_warm_run_leaves_the_record_of_a_ray_train_run(ray_local, workdir, mlflow_uri):
    # its slot reads the dataset and opens the MLflow store as it starts
    pool = SlotPool(1, cpus=1, config=tiny_ae(), tracking_uri=mlflow_uri)
    try:
        warm = [train(tiny_ae(), experiment="warm", quiet=True, warm=pool) for _ in range(2)]
    finally:
        pool.close()
    cold = train(tiny_ae(), experiment="cold", quiet=True)
    client = MlflowClient(mlflow_uri)
    reference = client.get_run(cold.run_id)
    assert schema.EXECUTOR not in reference.data.tags
    for result in warm:   # the second ran in the process the first left behind
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags[schema.EXECUTOR] == schema.WARM_SLOT
        assert "genbench.node.rank0" in run.data.tags
        # the same seed, the same numbers, and one point per logged step
        for key in ("mse", "val_mse"):
            got, want = points(client, result.run_id, key), points(client, cold.run_id, key)
            assert [s for s, _ in got] == [s for s, _ in want], key
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5), key
        assert [s for s, _ in points(client, result.run_id, "mse")] == \
            list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
        assert result.metrics["step"] == cold.metrics["step"] == STEPS
        # checkpoints where Ray Train keeps them: <storage>/<name>/checkpoint_<step>
        run_dir = Path(run.data.tags[schema.RAY_RUN_DIR])
        assert Path(result.checkpoint) == run_dir / f"checkpoint_{STEPS:09d}"
        assert checkpoints(run_dir) == checkpoints(reference.data.tags[schema.RAY_RUN_DIR])
        assert not list(run_dir.glob(".*partial"))


@pytest.mark.fault
def test_a_slot_killed_mid_run_hands_it_to_ray_train(ray_local, workdir, mlflow_uri, capsys):
    """The slot's process is SIGKILLed once the run's first checkpoint (step 20 of 200) is
    published: the run goes on under Ray Train from it, in the same MLflow run, every point
    once; the pool replaces the slot and trains the next run warm again."""
    import ray

    pool = SlotPool(1, cpus=1)
    (slot,) = pool._free
    pid = ray.get(slot.pid.remote())
    steps = 200
    cfg = tiny_ae(steps=steps, checkpoint_every=20)

    def kill_after_first_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline:
            if list(Path(workdir, "ray_results").glob("*/checkpoint_*")):
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    try:
        result = train(cfg, experiment="killed", quiet=True, warm=pool)
        killer.join()
        again = train(tiny_ae(), experiment="after", quiet=True, warm=pool)
    finally:
        pool.close()
    assert "the warm slot failed" in capsys.readouterr().err
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[schema.EXECUTOR] == f"{schema.WARM_SLOT}, then Ray Train"
    assert int(run.data.tags[schema.RESUMED_FROM_STEP]) >= 20
    assert [s for s, _ in points(client, result.run_id, "mse")] == \
        list(range(LOG_EVERY, steps + 1, LOG_EVERY))
    assert result.metrics["step"] == steps
    assert client.get_run(again.run_id).data.tags[schema.EXECUTOR] == schema.WARM_SLOT


@pytest.mark.fault
def test_sigterm_stops_a_bench_whose_run_trains_warm(workdir, mlflow_uri, tmp_path_factory):
    """`genbench bench` on its own local Ray, SIGTERMed while its one run trains in a warm slot:
    exit 143, the run KILLED with its points, no process left, and its newest checkpoint where
    `genbench train --resume` looks for it."""
    import subprocess
    import sys

    import psutil
    import yaml

    from testing.evalkit import domain_cache
    from test_signals import assert_all_gone

    preset = workdir / "long.yaml"
    preset.write_text(yaml.safe_dump({
        "every_family": {"config": {"ae": tiny_size("ae"), "train": {
            "steps": 100_000, "batch_size": 16, "log_every": 10, "checkpoint_every": 20,
            "checkpoint_min_interval_s": 0}}},
        "eval": {"n_real": 100, "extractors": ["domain"], "k": 1}}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"MLFLOW_TRACKING_URI": mlflow_uri,
                "GENBENCH_CACHE": str(domain_cache(tmp_path_factory.getbasetemp()))})
    proc = subprocess.Popen([sys.executable, "-m", "genbench", "bench", "--preset", str(preset),
                             "--families", "ae", "--experiment", "B"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client, deadline = MlflowClient(mlflow_uri), time.time() + 300
    while True:   # until the run's first checkpoint (step 20) is published
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the run never reached its first checkpoint"
        exp = client.get_experiment_by_name("B")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and list(Path(workdir, "ray_results").glob("*/checkpoint_*")):
            break
        time.sleep(0.3)
    (run,) = runs
    assert run.data.tags[schema.EXECUTOR] == schema.WARM_SLOT
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "mse")]
    assert steps and steps == list(range(10, steps[-1] + 1, 10))
    assert_all_gone(family)

    # what --resume would continue from: the warm slot's newest checkpoint, in Ray's layout
    from pipeline.trainer import newest_loadable_checkpoint
    path, payload, skipped = newest_loadable_checkpoint(run.data.tags[schema.RAY_RUN_DIR])
    assert path is not None and not skipped
    assert payload["step"] % 20 == 0 and payload["step"] <= steps[-1] + 20
    assert payload["mlflow_run_id"] == run.info.run_id

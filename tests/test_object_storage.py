"""Checkpoints on an object store (`--storage-path s3://...`), against moto's standalone S3
server on 127.0.0.1 (started and stopped here; nothing beyond loopback).

- test_train_resume_eval_on_an_object_store (slow, not fault: `make test`): `genbench train`
  processes, each with the local Ray it starts: a run whose rank 0 dies at step 25 (no restarts
  allowed) leaves its step-20 checkpoint in the bucket; `genbench train --resume` finishes it
  from there; `genbench eval --run-id` (its MLflow artifact deleted) and a checkpoint URI read
  the bucket. The endpoint rides in the URI (?endpoint_override=...&scheme=http), the dummy
  credentials in the environment.
- test_two_node_run_loses_a_node_and_resumes_from_the_bucket (slow + fault, the 2-node cluster
  of tests/test_cluster.py, a few minutes): the endpoint and credentials are in every node's
  environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), as on a real cluster; the worker node
  is SIGKILLed after the step-20 checkpoint and comes back; the run resumes from the bucket and
  finishes; then a stopped run (driver SIGTERMed) is resumed, and eval reads the bucket.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import pytest

from test_cluster import (BIN, cluster, free_ports, http_json, mlflow_run,  # noqa: F401
                          stop_session)
from test_cluster import wait_for as wait_until

BUCKET = "genbench-ckpts"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free loopback port with one bucket. For this module the process's
    environment names it (AWS_ENDPOINT_URL and dummy credentials): the 2-node cluster fixture,
    started after this one, hands that environment to its nodes and drivers."""
    import boto3

    (port,) = free_ports(1)
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    try:
        def up():
            try:
                with urllib.request.urlopen(endpoint, timeout=2):
                    return True
            except OSError as exc:
                return getattr(exc, "code", None) is not None  # an HTTP error: it answers
        wait_until(up, 60, "moto S3 server", [proc])
        for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        client = boto3.client("s3", endpoint_url=endpoint, **{
            "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
            "region_name": "us-east-1"})
        client.create_bucket(Bucket=BUCKET)
        yield SimpleNamespace(endpoint=endpoint, port=port, client=client)
    finally:
        mp.undo()
        stop_session(proc, grace=10)
        log.close()


def keys(s3, prefix: str) -> list[str]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def checkpoints(s3, prefix: str) -> list[str]:
    """'<ray dir>/checkpoint_<step>' of every checkpoint.pt under the prefix."""
    return [k.rsplit("/", 1)[0].split("/", 1)[1] for k in keys(s3, prefix)
            if k.endswith("/checkpoint.pt")]


# --- single local Ray (make test) ---------------------------------------------------------------
TINY = ["--model", "ae", "--workers", "1", "--set", "ae.width=8", "--set", "ae.latent_dim=8",
        "--set", "train.batch_size=16", "--set", "train.log_every=10",
        "--set", "train.eval_every=1000", "--set", "train.checkpoint_every=20",
        "--set", "train.checkpoint_min_interval_s=0"]


def genbench_train(*args: str, cwd, env: dict) -> subprocess.CompletedProcess:
    """`genbench train` in its own process, with the local Ray it starts: that Ray's workers
    inherit the driver's environment (the store's endpoint and credentials)."""
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "genbench", "train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_resume_eval_on_an_object_store(s3, workdir, mlflow_uri, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from eval.load import load_model
    from genbench.cli import main
    from pipeline.faults import ENV
    from pipeline.resume import RUN_DIR_TAG
    from pipeline.train import RESUMED_TAG

    # The endpoint given in the URI (AWS_ENDPOINT_URL names another, closed port): every URI
    # genbench builds from it keeps the query.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    query = f"?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
    storage = f"s3://{BUCKET}/light{query}"
    stopped = genbench_train(*TINY, "--steps", "40", "--set", "train.max_failures=0",
                             "--storage-path", storage, "--experiment", "S3", cwd=workdir,
                             env={**os.environ, ENV: "rank=0,step=25,action=kill"})
    assert stopped.returncode != 0, stopped.stderr[-3000:]
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("S3").experiment_id])
    run_id = run.info.run_id
    assert run.info.status != "FINISHED"
    ray_dir = f"genbench-ae-{run_id[:12]}"
    assert run.data.tags[RUN_DIR_TAG] == f"s3://{BUCKET}/light/{ray_dir}{query}"
    assert checkpoints(s3, "light/") == [f"{ray_dir}/checkpoint_000000020"]

    resumed = genbench_train("--resume", run_id, cwd=workdir,
                             env={k: v for k, v in os.environ.items() if k != ENV})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[RESUMED_TAG] == "20"  # from the bucket's checkpoint
    for key in ("mse", "lr"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [10, 20, 30, 40]
    last = f"{ray_dir}-resume2/checkpoint_000000040"
    assert last in checkpoints(s3, "light/")
    assert f"s3://{BUCKET}/light/{last}{query}" in resumed.stdout  # the bucket's copy

    # eval --run-id of a run whose checkpoint artifact is gone: its newest checkpoint in the
    # bucket. Then a checkpoint given by its URI.
    local_store = run.info.artifact_uri.removeprefix("file://")
    os.remove(os.path.join(local_store, "checkpoint", "checkpoint.pt"))
    evaluate = ["--metrics", "probe", "--probe-images", "500", "--quiet"]
    code = main(["eval", "--run-id", run_id, *evaluate])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert f"evaluating its checkpoint s3://{BUCKET}/light/{last}" in err
    assert "probe_accuracy" in client.get_run(run_id).data.metrics
    model = load_model(checkpoint=f"s3://{BUCKET}/light/{last}{query}")
    assert model.step == 40 and model.run_id == run_id


# --- the 2-node cluster (make test-faults) -------------------------------------------------------
def cluster_train(cluster, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "python"), "-m", "genbench", "train", "--model", "ae", "--workers", "2",
         "--set", "train.batch_size=32", "--set", "train.log_every=10",
         "--set", "train.checkpoint_every=20", "--set", "train.checkpoint_min_interval_s=0",
         "--address", cluster.address, *args],
        env=env or cluster.env, cwd=cluster.tmp, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def run_in(cluster, experiment: str, tag: str | None = None):
    """The id of the experiment's run (with that tag, if given), or None."""
    try:
        found = http_json(f"{cluster.mlflow}/api/2.0/mlflow/experiments/get-by-name?"
                          f"experiment_name={experiment}")
        runs = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{cluster.mlflow}/api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [found["experiment"]["experiment_id"]]}).encode(),
            headers={"Content-Type": "application/json"}), timeout=10).read())
    except (OSError, ValueError, KeyError):
        return None
    for run in runs.get("runs", []):
        if tag is None or any(t["key"] == tag for t in run["data"].get("tags", [])):
            return run["info"]["run_id"]
    return None


def history(cluster, run_id: str, key: str = "mse") -> list[int]:
    return sorted(m["step"] for m in http_json(
        f"{cluster.mlflow}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}"
    )["metrics"])


@pytest.mark.slow
@pytest.mark.fault  # make test-faults: the 2-node cluster
def test_two_node_run_loses_a_node_and_resumes_from_the_bucket(s3, cluster):
    """Rank 0 pauses after step 25 (checkpoint at 20, in the bucket) of a 2-node run with
    --storage-path s3://...; the worker node is SIGKILLed whole and comes back. Ray Train
    restarts the group from the bucket's step-20 checkpoint and the run finishes, one point per
    logged step. Then a second run's driver is SIGTERMed after its step-20 checkpoint, `genbench
    train --resume` finishes it from the bucket, and `genbench eval --run-id` reads it there."""
    assert cluster.env.get("AWS_ENDPOINT_URL") == s3.endpoint  # every node's environment
    storage = f"s3://{BUCKET}/genbench"
    env = {**cluster.env, "GENBENCH_FAULT": "rank=0,step=25,action=pause,seconds=10"}
    proc = cluster_train(cluster, "--steps", "40", "--storage-path", storage,
                         "--experiment", "s3-node-loss", env=env)
    try:
        run_id = wait_until(lambda: run_in(cluster, "s3-node-loss", "genbench.fault_fired"),
                            300, "the paused run", [proc])
        ray_dir = f"genbench-ae-{run_id[:12]}"
        assert f"{ray_dir}/checkpoint_000000020" in checkpoints(s3, "genbench/")
        cluster.lose_worker_node()
        time.sleep(30)
        cluster.bring_back_worker_node()
        out, err = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    cluster.node_ids = set(wait_until(cluster.alive_nodes, 120, "two alive Ray nodes again"))
    assert proc.returncode == 0, err[-3000:]
    run = mlflow_run(cluster, run_id)
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["genbench.resumed_from_step"] == "20"
    assert tags["genbench.ray_run_dir"] == f"{storage}/{ray_dir}"
    assert history(cluster, run_id) == [10, 20, 30, 40]
    assert f"{ray_dir}/checkpoint_000000040" in checkpoints(s3, "genbench/")
    assert f"{storage}/{ray_dir}/checkpoint_000000040" in out

    # A stopped run: its driver SIGTERMed while rank 0 pauses after its step-20 checkpoint.
    env = {**cluster.env, "GENBENCH_FAULT": "rank=0,step=25,action=pause,seconds=300"}
    proc = cluster_train(cluster, "--steps", "40", "--storage-path", storage,
                         "--experiment", "s3-stopped", env=env)
    try:
        stopped = wait_until(lambda: run_in(cluster, "s3-stopped", "genbench.fault_fired"),
                             300, "the paused run", [proc])
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and f"genbench train --resume {stopped}" in err, err[-3000:]
    assert mlflow_run(cluster, stopped)["info"]["status"] == "KILLED"
    resumed = subprocess.run([str(BIN / "python"), "-m", "genbench", "train", "--resume",
                              stopped, "--address", cluster.address], env=cluster.env,
                             cwd=cluster.tmp, capture_output=True, text=True, timeout=420)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = mlflow_run(cluster, stopped)
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["genbench.resumed_from_step"] == "20"
    assert history(cluster, stopped) == [10, 20, 30, 40]
    assert f"genbench-ae-{stopped[:12]}-resume2/checkpoint_000000040" in \
        checkpoints(s3, "genbench/")

    # eval --run-id: the MLflow artifact gone (as when it went to a store the driver does not
    # see), the run's newest checkpoint in the bucket is evaluated.
    for path in (cluster.tmp / "artifacts").rglob("checkpoint.pt"):
        if stopped in str(path):
            path.unlink()
    evaluated = subprocess.run([str(BIN / "python"), "-m", "genbench", "eval", "--run-id",
                                stopped, "--metrics", "probe", "--probe-images", "500",
                                "--quiet"], env=cluster.env, cwd=cluster.tmp,
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert re.search(rf"evaluating its checkpoint {storage}/genbench-ae-{stopped[:12]}-resume2/"
                     rf"checkpoint_000000040", evaluated.stderr), evaluated.stderr[-3000:]
    metrics = {m["key"] for m in mlflow_run(cluster, stopped)["data"]["metrics"]}
    assert "probe_accuracy" in metrics

"""How long a tracking-server outage a `genbench train` run survives, measured end to end.

A real `mlflow server` on 127.0.0.1 (sqlite store in a temp dir) and a real `genbench train`
(its own local Ray, 1 worker, tiny AE) whose rank 0 pauses after step 25 (GENBENCH_FAULT), so
the server is SIGKILLed mid-run at a known step. The server stays down for each --outage-s, then
comes back on the same port and store. A row per outage: how the run ended, whether its worker
group restarted, and whether every metric has one point per logged step. The suite's test does
90 s (tests/test_launch.py); this does what a test cannot afford, e.g. the 5 minutes that
issue 27 asks a run to survive (train.tracking_outage_s defaults to 600 s).

    python -m benchmarks.tracking_outage                     # a 300 s outage
    python -m benchmarks.tracking_outage --outage-s 60,300
    python -m benchmarks.tracking_outage --smoke             # a 5 s outage
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import add_smoke, print_table, tiny_sets

STEPS, LOG_EVERY = 40, 10
PAUSE = "rank=0,step=25,action=pause,seconds=5"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, root: Path) -> subprocess.Popen:
    from pipeline.services import unreachable

    log = open(root / "mlflow-server.log", "a")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.time() + 180
    while unreachable(f"http://127.0.0.1:{port}", timeout=2, tries=1):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"mlflow server did not start; see {root / 'mlflow-server.log'}")
        time.sleep(1)
    return proc


def kill_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # gunicorn/uvicorn workers too
    proc.wait(timeout=60)


def one_outage(outage_s: float, root: Path) -> list:
    from mlflow.tracking import MlflowClient

    from pipeline import schema

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(port, root)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GENBENCH_FAULT": PAUSE,
           "GENBENCH_SPOOL": str(root / "spool")}
    env.pop("RAY_ADDRESS", None)  # its own Ray: its workers see this environment
    argv = [sys.executable, "-m", "genbench", "train", "--model", "ae", "--workers", "1",
            "--steps", str(STEPS), "--experiment", "outage", *tiny_sets_args("ae"),
            "--set", "train.batch_size=32", "--set", f"train.log_every={LOG_EVERY}",
            "--set", "train.checkpoint_every=10", "--set", "train.checkpoint_min_interval_s=0",
            "--set", f"train.tracking_outage_s={max(600, 2 * outage_s)}"]
    t0 = time.time()
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(root / "train.log", "w"))
    client = MlflowClient(uri)
    try:
        run_id = None
        while run_id is None:  # the fault tag says rank 0's pause began
            if proc.poll() is not None:
                raise RuntimeError(f"genbench train exited early; see {root / 'train.log'}")
            try:
                exp = client.get_experiment_by_name("outage")
                runs = client.search_runs([exp.experiment_id]) if exp else []
            except Exception:
                runs = []
            if runs and schema.FAULT_FIRED in runs[0].data.tags:
                run_id = runs[0].info.run_id
            time.sleep(0.5)
        kill_server(server)
        time.sleep(outage_s)
        alive_after_outage = proc.poll() is None
        server = start_server(port, root)
        back = time.time()
        code = proc.wait(timeout=max(600, 2 * outage_s))
        end = time.time()
        run = client.get_run(run_id)
        expected = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
        once = all(sorted(m.step for m in client.get_metric_history(run_id, key)) == expected
                   for key in ("mse", "images_per_s"))
        return [f"{outage_s:.0f}", "yes" if alive_after_outage else "no", code,
                run.info.status, "yes" if schema.RESUMED_FROM_STEP in run.data.tags else "no",
                "yes" if once else "NO", f"{end - back:.1f}", f"{end - t0:.0f}"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_server(server)


def tiny_sets_args(family: str) -> list[str]:
    return [arg for kv in tiny_sets(family) for arg in ("--set", kv)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tracking_outage",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--outage-s", default="300",
                   help="comma list of outage lengths in seconds (default 300)")
    add_smoke(p)
    args = p.parse_args(argv)
    outages = [5.0] if args.smoke else [float(s) for s in args.outage_s.split(",")]
    rows = []
    for outage in outages:
        with tempfile.TemporaryDirectory(prefix="genbench-outage-") as tmp:
            print(f"outage of {outage:.0f} s ...", file=sys.stderr, flush=True)
            rows.append(one_outage(outage, Path(tmp)))
    print_table(["outage s", "run alive after it", "exit", "MLflow status", "group restarted",
                 "one point per logged step", "s from server back to end", "wall s"], rows,
                right=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

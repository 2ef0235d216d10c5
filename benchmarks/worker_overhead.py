"""Where genbench's training worker loses time against a plain loop, with Ray Train held fixed:
the same TorchTrainer (pipeline.trainer.make_trainer) on one local Ray runs, in turn,
  - genbench's worker function (pipeline.train.train_loop_per_worker) with checkpoints every
    --checkpoint-every steps, and with checkpoints off;
  - the plain PyTorch loop of train_throughput.py as the worker function.
The three are interleaved --repeats times, so that a machine whose speed drifts (a shared VM)
moves all of them alike. genbench's figure is wall-clock images/s from the first to the last
logged step (MLflow timestamps), the plain loop's from step --log-every to the last.

    python -m benchmarks.worker_overhead [--family vae] [--steps 300] [--repeats 3]
    python -m benchmarks.worker_overhead --smoke       # does it run? (tiny, 6 steps, 1 repeat)

Measured on 2 cores (2026-12-04, VAE, 300 steps, 3 repeats, nothing else running): with
checkpoints 3806 / 3626 / 3491 img/s (0.914 of the plain loop), without 3831 / 3701 / 3791
(0.948), plain loop 4152 / 3873 / 3923. So a checkpoint (every ~1.7 s) costs the training
thread ~60 ms, of which torch.save of the 4.5 MB file is 2-4 ms; the rest, not timed apart, is
the wait for the MLflow writer's flush and Ray's copy of the checkpoint into storage.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (add_smoke, config, plain_loop, print_table, private_mlflow,
                               start_ray, tiny_sets, wall_clock)


def plain_worker(config: dict) -> None:
    """The plain loop as a Ray Train worker function; writes its images/s to config['out']."""
    from pipeline.config import Config

    result = plain_loop(Config.from_dict(config["config"]), config["log_every"], False,
                        config["threads"])
    Path(config["out"]).write_text(str(result["images_per_s"]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="vae")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, or a local Ray)")
    add_smoke(ap)
    args = ap.parse_args(argv)
    size = []
    if args.smoke:
        args.steps, args.log_every, args.checkpoint_every, args.repeats = 6, 2, 4, 1
        size = tiny_sets(args.family) + ["train.batch_size=16"]

    tmp = tempfile.mkdtemp(prefix="worker_overhead.")
    uri = private_mlflow(tmp)
    from mlflow.tracking import MlflowClient

    from pipeline import tracking
    from pipeline.cluster import resolve_resources
    from pipeline.train import train_loop_per_worker
    from pipeline.trainer import make_trainer

    started = start_ray(args.address)
    client = MlflowClient(uri)

    def config_of(checkpoint_every: int):
        sets = [*size, f"train.log_every={args.log_every}",
                f"train.checkpoint_every={checkpoint_every}", "train.eval_every=1000000000",
                f"train.storage_path={tmp}/ray_results"]
        return resolve_resources(config(args.family, sets, args.steps))

    def genbench(cfg, name: str) -> float:
        run_id = tracking.start_run(name, name, cfg.flat(), {})
        loop_config = {"config": cfg.to_dict(), "run_id": run_id, "tracking_uri": uri}
        make_trainer(train_loop_per_worker, loop_config, cfg, name, f"{tmp}/ray_results",
                     2).fit()
        return wall_clock(client, client.get_run(run_id))["images_per_s"]

    def plain(cfg, name: str) -> float:
        out = f"{tmp}/{name}.txt"
        make_trainer(plain_worker, {"out": out, "config": cfg.to_dict(),
                                    "log_every": args.log_every,
                                    "threads": cfg.train.cpus_per_worker},
                     cfg, name, f"{tmp}/ray_results", 2).fit()
        return float(Path(out).read_text())

    with_ckpt, without = config_of(args.checkpoint_every), config_of(10**9)
    rows = {"genbench, checkpoints": [], "genbench, no checkpoints": [], "plain loop": []}
    for rep in range(args.repeats):
        rows["genbench, checkpoints"].append(genbench(with_ckpt, f"ckpt{rep}"))
        rows["genbench, no checkpoints"].append(genbench(without, f"nockpt{rep}"))
        rows["plain loop"].append(plain(with_ckpt, f"plain{rep}"))
        print(f"  repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rows.items()),
              file=sys.stderr, flush=True)
    reference = statistics.mean(rows["plain loop"])
    print(f"\n{args.family}, {args.steps} steps, 1 worker ({os.cpu_count()} cores), the same "
          f"TorchTrainer for all; checkpoints every {args.checkpoint_every} steps")
    print_table(["worker function", "images/s per repeat", "mean", "against the plain loop"],
                [[name, " / ".join(f"{v:.0f}" for v in values), f"{statistics.mean(values):.0f}",
                  f"{statistics.mean(values) / reference:.3f}"] for name, values in rows.items()])
    if started:
        import ray
        ray.shutdown()


if __name__ == "__main__":
    main()

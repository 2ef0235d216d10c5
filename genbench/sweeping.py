"""`genbench tune`: arguments -> (Config, SweepOptions) -> tune.sweep."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from genbench.options import DATASET_HELP, add_model_argument, build_config, positive_int
from pipeline.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--dataset", help=DATASET_HELP)
    p.add_argument("--samples", type=int, default=8, help="trials to run (default 8)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps per trial "
                   "(default: 1 epoch)")
    p.add_argument("--workers-per-trial", type=positive_int, default=1, help="DDP workers per "
                   "trial; 1 runs the loop inside the trial, more start a TorchTrainer")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha",
                   help="asha (default) stops weak trials early; fifo runs every trial out")
    p.add_argument("--search", choices=["random", "optuna"], default="random",
                   help="search algorithm: random sampling (default) or Optuna's TPE")
    p.add_argument("--metric", help="metric to optimise (default: the family's validation "
                   "metric, e.g. val_bpd; a FID of 500 samples for families without one)")
    p.add_argument("--mode", choices=["min", "max"], help="default min")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config; its `tune:` section "
                   "is the search space, e.g. tune: {vae.beta: {loguniform: [0.1, 10]}}")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key for every trial, e.g. --set vae.width=16")
    p.add_argument("--seed", type=int, help="random seed of the search and the trials")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    # default None, not 1: --resume can then tell it was given (and refuse it)
    p.add_argument("--trials-per-gpu", type=positive_int, metavar="N", help="with --gpu and 1 "
                   "worker per trial: each trial asks for 1/N of a GPU, so N trials train on "
                   "one GPU at once (default 1)")
    p.add_argument("--storage-path", help="where the sweep lives (default ./ray_results)")
    p.add_argument("--experiment", default="genbench", help="MLflow experiment")
    p.add_argument("--resume", metavar="PATH", help="continue an interrupted sweep (its "
                   "directory, printed at start) without re-running finished trials")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    # SUPPRESS: left unset here, `genbench --verbose CMD` (the top-level flag) holds
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show Ray's own logs")


def read_space(path: str | None) -> dict | None:
    """The YAML file's `tune:` section if it has one (None: the family's default space)."""
    if not path:
        return None
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(raw, dict) and "tune" in raw:
        return raw["tune"] or {}
    return None


def run(args) -> int:
    from tune.sweep import SweepOptions, resume, sweep

    if args.resume:
        given = [f"--{n.replace('_', '-')}" for n in ("model", "dataset", "config", "set",
                                                      "steps", "metric", "mode",
                                                      "trials_per_gpu")
                 if getattr(args, n, None)]
        if given:
            raise ConfigError(f"--resume continues a sweep with its saved settings; drop "
                              f"{', '.join(given)}")
        return resume(args.resume, args.address, args.verbose)
    args.workers = args.workers_per_trial
    cfg = build_config(args)
    options = SweepOptions(samples=args.samples, scheduler=args.scheduler, search=args.search,
                           metric=args.metric, mode=args.mode, space=read_space(args.config),
                           experiment=args.experiment, address=args.address,
                           verbose=args.verbose, trials_per_gpu=args.trials_per_gpu or 1)
    return sweep(cfg, options)

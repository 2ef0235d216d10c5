"""`genbench`: train, eval, tune, report and bench subcommands.

Bad input exits with code 2 and one line, `genbench: error: <what is wrong; how to fix it>`.
"""
from __future__ import annotations

import argparse
import os
import sys

from pipeline.errors import ConfigError, RunStopped

DATASET_HELP = "fashion-mnist (default), mnist, cifar10, or a path to an ImageFolder directory"


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (the default prints the whole usage first)."""

    def error(self, message: str):
        print(f"genbench: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.models import FAMILIES
    p.add_argument("--model", choices=list(FAMILIES), help="model family (default: vae, or the "
                   "config file's)")
    p.add_argument("--dataset", help=DATASET_HELP)
    p.add_argument("--workers", type=positive_int, help="Ray Train workers, one DDP rank each "
                   "(default 1)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, nccl, bf16 autocast")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=positive_int, help="optimizer steps (default: 1 epoch)")
    steps.add_argument("--epochs", type=positive_float, help="epochs over the train split")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config with sections model, "
                   "data, train and the family's (e.g. vae:)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key, e.g. --set vae.beta=4 --set train.batch_size=64")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--storage-path", help="where Ray keeps checkpoints (default ./ray_results); "
                   "shared storage such as s3://... or NFS on multi-node clusters")


def build_config(args, base: dict | None = None):
    from pipeline.config import Config, load_yaml, merge, parse_overrides

    raw = dict(base or {})
    if getattr(args, "config", None):
        raw = merge(raw, load_yaml(args.config))
    cli: dict = {}
    if args.model:
        cli["model"] = args.model
    if args.dataset:
        cli.setdefault("data", {})["dataset"] = args.dataset
    for key in ("workers", "steps", "epochs", "seed", "storage_path"):
        value = getattr(args, key, None)
        if value is not None:
            cli.setdefault("train", {})[key] = value
    if getattr(args, "gpu", False):
        cli.setdefault("train", {})["gpu"] = True
    if cli.get("train", {}).get("steps") is not None:
        raw.get("train", {}).pop("epochs", None)
    if cli.get("train", {}).get("epochs") is not None:
        raw.get("train", {}).pop("steps", None)
    raw = merge(raw, cli)
    raw = merge(raw, parse_overrides(args.set))
    return Config.from_dict(raw)


def cmd_train(args) -> int:
    from pipeline.launch import train

    if args.resume:
        if args.model or args.config or args.set or args.dataset:
            raise ConfigError("--resume continues a run with its saved config; drop --model, "
                              "--dataset, --config and --set")
        cfg = None
    else:
        cfg = build_config(args)
    result = train(cfg, experiment=args.experiment, address=args.address, resume=args.resume,
                   verbose=args.verbose)
    print_summary(result)
    if args.eval:
        from eval.cli import evaluate_after_training
        return evaluate_after_training(result.run_id, args.eval_n)
    return 0


def print_summary(result) -> None:
    from pipeline import tracking

    shown = {k: v for k, v in result.metrics.items()
             if isinstance(v, float) and not k.startswith("lr")}
    print(f"\ndone: {result.steps} steps in {result.seconds:.0f}s")
    for key in sorted(shown):
        print(f"  {key:<14} {shown[key]:.4g}")
    print(f"  MLflow run    {result.run_id} (experiment {result.experiment!r}, "
          f"{tracking.tracking_uri()})")
    if result.checkpoint:
        print(f"  checkpoint    {result.checkpoint}")


def cmd_bench(args) -> int:
    from pipeline.bench import run_bench
    return run_bench(args)


def cmd_tune(args) -> int:
    from tune.sweep import run
    return run(args)


def cmd_eval(args) -> int:
    from eval.cli import run_command
    runner = None
    if args.eval_command is None and args.workers > 1:  # eval/ stays Ray-free: Ray lives here
        from functools import partial

        from pipeline.eval_workers import ray_nll_sums
        runner = partial(ray_nll_sums, address=args.address, verbose=args.verbose)
    return run_command(args, runner)


def cmd_report(args) -> int:
    from eval.report import default_out_dir, write_report
    html = write_report(args.experiment, args.out or default_out_dir(args.experiment), args.force)
    print(f"{html}\n{html.with_name('report.md')}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="genbench", description="Train, sweep, evaluate and benchmark deep "
                    "generative models of images (AE, beta-VAE, DCGAN, gated PixelCNN) with "
                    "Ray and MLflow.",
                    epilog="MLflow: MLFLOW_TRACKING_URI (default sqlite:///mlflow.db here). "
                    "Ray: RAY_ADDRESS or --address (default: a local instance).")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train one model family with Ray Train (DDP)",
                       description="Train a model family with Ray Train; everything is logged "
                       "to one MLflow run.")
    add_train_arguments(p)
    p.add_argument("--experiment", default="genbench", help="MLflow experiment (default genbench)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run from its "
                   "last checkpoint, in the same MLflow run")
    p.add_argument("--eval", action="store_true", help="run `genbench eval` (default metrics) "
                   "on the run when training ends")
    p.add_argument("--eval-n", type=positive_int, metavar="N", help="generated and real "
                   "images for --eval (default 10000 or the test split's size)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run: FID/IS/KID/PR, bits/dim, linear "
                       "probe; logged into the same MLflow run",
                       description="Evaluate a `genbench train` run (--run-id) or a checkpoint: "
                       "sample-quality metrics through torch-fidelity, bits/dim on the test "
                       "split, linear-probe accuracy of the encoder. Prints a table and logs "
                       "metrics, the protocol (tags eval.*) and a sample PNG into the run. "
                       "`genbench eval train-classifier` trains the domain extractor.")
    from eval.cli import add_arguments as add_eval_arguments
    add_eval_arguments(p)
    p.add_argument("--verbose", action="store_true", help="show Ray's and MLflow's own logs")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("tune", help="sweep hyperparameters with Ray Tune (ASHA, MLflow "
                       "parent + child runs)", description="Sweep a family's hyperparameters "
                       "(default: VAE beta and lr; GAN lr_g, lr_d, beta1; AE/PixelCNN lr, all "
                       "log-uniform; a YAML `tune:` section replaces them). Writes the best "
                       "config as YAML for `genbench train --config`.")
    from pipeline.models import FAMILIES
    p.add_argument("--model", choices=list(FAMILIES), help="model family (default: vae, or "
                   "the config file's)")
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
    p.add_argument("--metric", help="metric to optimise (default: val_bpd for vae and "
                   "pixelcnn, val_mse for ae, val_fid_domain for gan)")
    p.add_argument("--mode", choices=["min", "max"], help="default min")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config; its `tune:` section "
                   "is the search space, e.g. tune: {vae.beta: {loguniform: [0.1, 10]}}")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key for every trial, e.g. --set vae.width=16")
    p.add_argument("--seed", type=int, help="random seed of the search and the trials")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--storage-path", help="where the sweep lives (default ./ray_results)")
    p.add_argument("--experiment", default="genbench", help="MLflow experiment")
    p.add_argument("--resume", metavar="PATH", help="continue an interrupted sweep (its "
                   "directory, printed at start) without re-running finished trials")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("bench", help="the one-command benchmark: train, evaluate and "
                       "sweep every family, then write the report",
                       description="Train every family on one dataset, evaluate each, run a "
                       "small beta/lr sweep and write the report (reports/<experiment>/).")
    p.add_argument("--preset", choices=["quick", "full"], default="quick",
                   help="quick: minutes on 2 CPU cores; full: sized for a GPU cluster")
    p.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    p.add_argument("--experiment", help="MLflow experiment (default: a new one, "
                   "bench-<preset>-<date-time>, so runs and reports are never mixed)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="write the benchmark report (Markdown + self-contained "
                       "HTML) of an experiment", description="Read an experiment's MLflow runs "
                       "(train, eval, tune) and write DIR/report.md and DIR/report.html (images "
                       "embedded, no external requests); both are logged to a report run.")
    p.add_argument("--experiment", required=True, help="MLflow experiment to report on")
    p.add_argument("--out", metavar="DIR", help="output directory (default reports/EXPERIMENT)")
    p.add_argument("--force", action="store_true", help="replace an existing report in DIR")
    p.add_argument("--verbose", action="store_true", help="show MLflow's own logs")
    p.set_defaults(func=cmd_report)
    return parser


def check_services(args) -> None:
    """Before a command starts anything: the MLflow store it logs to and the Ray cluster it joins
    answer within seconds, or one line says which does not and how to fix it (exit 2)."""
    if args.command == "eval" and args.eval_command:  # train-classifier uses neither
        return
    from pipeline import tracking
    tracking.check_store()
    if args.command in ("train", "tune", "bench") or (args.command == "eval" and args.workers > 1):
        from pipeline.launch import check_ray_address
        check_ray_address(args.address)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    args = make_parser().parse_args(argv)
    if not args.verbose:
        import logging
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        check_services(args)
        return args.func(args)
    except ConfigError as exc:
        print(f"genbench: error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:
        print(f"genbench: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("genbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

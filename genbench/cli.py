"""`genbench`: the train, eval, tune, bench and report commands.

Bad input exits with code 2 and one line, `genbench: error: <what is wrong; how to fix it>`.
"""
from __future__ import annotations

import argparse
import os
import sys

from genbench import bench, evaluation, replay, reporting, sweeping, training
from genbench.options import Parser
from pipeline.errors import ConfigError, RunStopped
from pipeline.signals import Terminated, handle_sigterm
from pipeline.signals import exit_code as signal_exit_code


def make_parser() -> argparse.ArgumentParser:
    from pipeline.models import names

    parser = Parser(prog="genbench", description="Train, sweep, evaluate and benchmark deep "
                    f"generative models of images ({', '.join(names())}) with Ray and MLflow.",
                    epilog="MLflow: MLFLOW_TRACKING_URI (default sqlite:///mlflow.db here). "
                    "Ray: RAY_ADDRESS or --address (default: a local instance).")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train one model family with Ray Train (DDP)",
                       description="Train a model family with Ray Train; everything is logged "
                       "to one MLflow run.")
    training.add_arguments(p)
    p.set_defaults(func=training.run)

    p = sub.add_parser("eval", help="evaluate a trained run: FID/IS/KID/PR, bits/dim, linear "
                       "probe; logged into the same MLflow run",
                       description="Evaluate a `genbench train` run (--run-id) or a checkpoint: "
                       "sample-quality metrics through torch-fidelity, bits/dim on the test "
                       "split, linear-probe accuracy of the encoder. Prints a table and logs "
                       "metrics, the protocol (tags eval.*) and a sample PNG into the run. "
                       "`genbench eval train-classifier` trains the domain extractor.")
    evaluation.add_arguments(p)
    p.set_defaults(func=evaluation.run)

    p = sub.add_parser("tune", help="sweep hyperparameters with Ray Tune (ASHA, MLflow "
                       "parent + child runs)", description="Sweep a family's hyperparameters "
                       "(default: the family's TUNE_SPACE, e.g. VAE beta and lr; a YAML `tune:` "
                       "section replaces it). Writes the best config as YAML for "
                       "`genbench train --config`.")
    sweeping.add_arguments(p)
    p.set_defaults(func=sweeping.run)

    p = sub.add_parser("bench", help="the one-command benchmark: train, evaluate and "
                       "sweep every family, then write the report",
                       description="Train every family on one dataset, evaluate each, run a "
                       "small beta/lr sweep, time one family with 1, 2, ... workers (the "
                       "report's scaling table) and write the report (reports/<experiment>/). "
                       "--workers, --gpu and --storage-path apply to every run.")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)

    p = sub.add_parser("report", help="write the benchmark report (Markdown + self-contained "
                       "HTML) of an experiment", description="Read an experiment's MLflow runs "
                       "(train, eval, tune) and write DIR/report.md and DIR/report.html (images "
                       "embedded, no external requests); both are logged to a report run.")
    reporting.add_arguments(p)
    p.set_defaults(func=reporting.run)

    p = sub.add_parser("tracking", help="MLflow records kept on disk during a tracking-server "
                       "outage: `genbench tracking replay [DIR]` sends them",
                       description="While the MLflow tracking server is unreachable, runs "
                       "keep what they log in a spool on disk ($GENBENCH_SPOOL, default "
                       "~/.cache/genbench/spool) and send it when the server is back; a spool "
                       "left behind (past train.tracking_outage_s) is sent with `replay`.")
    replay.add_arguments(p)
    return parser


def check_services(args) -> None:
    """Before a command starts anything: the Ray cluster it joins and the MLflow store it logs
    to answer within seconds, or one line says which does not and how to fix it (exit 2)."""
    from pipeline.services import check_ray_address, check_store

    if args.command == "eval" and args.eval_command:  # train-classifier uses neither
        return
    if args.command == "tracking":  # a spool names its own store, and may find it still down
        return
    if args.command in ("train", "tune", "bench") or (args.command == "eval" and args.workers > 1):
        check_ray_address(args.address)
    check_store()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    args = make_parser().parse_args(argv)
    handle_sigterm()
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
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (pipeline/signals.py)
        print(f"genbench: {'terminated' if isinstance(stop, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return signal_exit_code(stop)


if __name__ == "__main__":
    sys.exit(main())

"""`genbench train`: arguments -> Config -> pipeline.launch.train, then a summary."""
from __future__ import annotations

import argparse

from genbench.options import add_train_arguments, build_config, positive_int
from pipeline.errors import ConfigError

EXPERIMENT_DEFAULT = "genbench"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)
    p.add_argument("--experiment", default=EXPERIMENT_DEFAULT,
                   help="MLflow experiment (default genbench)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run from its "
                   "last checkpoint, in the same MLflow run")
    p.add_argument("--eval", action="store_true", help="run `genbench eval` (default metrics) "
                   "on the run when training ends")
    p.add_argument("--eval-n", type=positive_int, metavar="N", help="generated and real "
                   "images for --eval (default 10000 or the test split's size)")
    # SUPPRESS: left unset here, `genbench --verbose CMD` (the top-level flag) holds
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show Ray's own logs")


def run(args) -> int:
    from pipeline.launch import train

    if args.resume:
        check_resume_arguments(args)
        cfg = None
    else:
        cfg = build_config(args)
    result = train(cfg, experiment=args.experiment, address=args.address, resume=args.resume,
                   verbose=args.verbose)
    print_summary(result)
    if args.eval:
        from genbench.evaluation import evaluate_after_training
        return evaluate_after_training(result.run_id, args.eval_n)
    return 0


def check_resume_arguments(args) -> None:
    """--resume continues a run with its saved config (model, data, workers, steps, seed,
    GPU, storage) in its own MLflow experiment: an option that would change one of those is
    refused by name rather than silently dropped. Before Ray starts."""
    given = [flag for flag, value in (
        ("--model", args.model), ("--dataset", args.dataset), ("--config", args.config),
        ("--set", args.set), ("--workers", args.workers), ("--gpu", args.gpu),
        ("--steps", args.steps), ("--epochs", args.epochs), ("--seed", args.seed),
        ("--storage-path", args.storage_path)) if value]
    if given:
        raise ConfigError(f"--resume continues a run with its saved config and would ignore "
                          f"{', '.join(given)}; drop {'it' if len(given) == 1 else 'them'} (a "
                          f"new config is a new run: genbench train without --resume)")
    if args.experiment != EXPERIMENT_DEFAULT:  # given: it must be the run's own
        from pipeline import tracking

        try:
            run = tracking.get_run(args.resume)
        except ConfigError:
            return  # launch says that the run is not there
        own = tracking.client().get_experiment(run.info.experiment_id).name
        if own != args.experiment:
            raise ConfigError(f"--resume continues run {args.resume} in its own MLflow "
                              f"experiment {own!r}, not --experiment {args.experiment!r}; "
                              f"drop --experiment")


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

"""The `genbench` commands: train, eval, tune, bench and report.

The top layer: it parses arguments and calls the packages below it, which never import it.

    pipeline/  config, data, models, the training loop under Ray Train, MLflow tracking
    eval/      metrics and the report (no Ray)
    tune/      sweeps over the training loop (Ray Tune)
    genbench/  the command line (this package)
"""

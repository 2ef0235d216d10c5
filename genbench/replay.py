"""`genbench tracking replay [DIR]`: send what a run kept on disk while the MLflow tracking
server was unreachable (pipeline/spool.py), then delete it. DIR is one run's spool, or a folder
of them (default: the spool root, $GENBENCH_SPOOL or ~/.cache/genbench/spool)."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tracking_command", metavar="replay", required=True,
                           parser_class=type(p))
    r = sub.add_parser("replay", help="send a spool of unsent MLflow records to its run",
                       description="Send the records a run kept on disk while the MLflow "
                       "tracking server was unreachable, in order, leaving out metric points "
                       "(key, step) the run already holds; then delete the spool.")
    r.add_argument("spool", nargs="?", metavar="DIR", help="one run's spool directory, or a "
                   "folder of them (default: $GENBENCH_SPOOL or ~/.cache/genbench/spool)")
    r.add_argument("--tracking-uri", metavar="URI", help="send to this MLflow store instead of "
                   "the one the spool was written for")
    r.set_defaults(func=run)


def run(args) -> int:
    from pipeline import spool, tracking

    where = Path(args.spool) if args.spool else spool.root()
    if not where.is_dir():
        if args.spool:
            raise ConfigError(f"no spool directory {where}; give one that "
                              f"`genbench train` named, or none for {spool.root()}")
        print(f"nothing to replay: no spool under {where}")
        return 0
    dirs = [where] if spool.Spool.is_spool(where) else \
        sorted(d for d in where.iterdir() if spool.Spool.is_spool(d))
    if not dirs:
        if args.spool:
            raise ConfigError(f"{where} holds no genbench spool (no meta.json in it or its "
                              f"folders); give a directory that `genbench train` named")
        print(f"nothing to replay: no spool under {where}")
        return 0
    for directory in dirs:
        run_id, uri, count = tracking.replay_spool(directory, args.tracking_uri)
        print(f"replayed {count} record(s) into MLflow run {run_id} at {uri}; "
              f"removed {directory}")
    return 0

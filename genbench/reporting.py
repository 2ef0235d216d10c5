"""`genbench report`: an experiment's MLflow runs -> report.md + report.html."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help="MLflow experiment to report on")
    p.add_argument("--out", metavar="DIR", help="output directory (default "
                   "reports/EXPERIMENT, the name made one path part)")
    p.add_argument("--force", action="store_true", help="replace the report genbench wrote in "
                   "DIR (the files its report.manifest.json lists; other files stay)")
    # SUPPRESS: left unset here, `genbench --verbose CMD` (the top-level flag) holds
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show MLflow's own logs")


def run(args) -> int:
    from report.render import default_out_dir, write_report
    html = write_report(args.experiment, args.out or default_out_dir(args.experiment), args.force)
    print(f"{html}\n{html.with_name('report.md')}")
    return 0

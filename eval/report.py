"""`genbench report`: an experiment's MLflow runs -> DIR/report.md + a self-contained report.html.

The HTML embeds every image as a data: URI and loads nothing else (no CDN CSS, JS or fonts), so it
opens offline and can be mailed around. The Markdown links the same PNGs under DIR/images/. Both
are logged as artifacts of a new MLflow run tagged genbench.kind=report in the same experiment.
An existing report directory is never replaced without force=True.
"""
from __future__ import annotations

import base64
import re
import shutil
import sys
from pathlib import Path

import jinja2
import markupsafe

from eval import report_data
from eval.report_collect import collect
from eval.report_data import Image, ReportData, fmt
from eval.report_scaling import COLUMNS as SCALING_COLUMNS
from pipeline import VERSION, tracking
from pipeline.errors import ConfigError

TEMPLATES = Path(__file__).parent / "templates"
OUTPUTS = ("report.md", "report.html", "images")  # what a report directory holds


def default_out_dir(experiment: str) -> Path:
    return Path("reports") / experiment


def write_report(experiment: str, out_dir: Path | str | None = None, force: bool = False,
                 uri: str | None = None, quiet: bool = False) -> Path:
    """Render the report of one experiment; returns the path of report.html."""
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(experiment)
    check_out_dir(out_dir, force)
    uri = uri or tracking.tracking_uri()
    data = collect(experiment, uri)
    if data is None:
        raise ConfigError(f"no MLflow experiment {experiment!r} at {uri}; check --experiment "
                          f"and MLFLOW_TRACKING_URI, or train into it first")
    run_id = tracking.start_run(
        experiment, f"report-{experiment}", {"report.out_dir": str(out_dir.absolute())},
        {report_data.KIND_TAG: "report", "genbench.version": VERSION,
         "git.commit": tracking.git_commit() or "unknown",
         "genbench.report_of": ",".join(r.run_id for r in data.rows)}, uri=uri)
    try:
        data.report_run_id = run_id
        html_path = write_files(data, out_dir, force)
        logger = tracking.RunLogger(run_id, uri)
        for name in OUTPUTS:
            if (out_dir / name).is_file():
                logger.artifact(out_dir / name)
        for png in sorted((out_dir / "images").glob("*.png")):
            logger.artifact(png, "images")
        logger.close()  # the writer is asynchronous: written before the run is ended
    except BaseException:
        tracking.end_run(run_id, "FAILED", uri)
        raise
    tracking.end_run(run_id, "FINISHED", uri)
    if not quiet:
        print(f"genbench: report of {experiment!r}: {len(data.rows)} families, "
              f"{len(data.sweeps)} sweep(s), {len(data.missing)} missing piece(s)",
              file=sys.stderr)
    return html_path


def check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; pass a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ConfigError(f"report directory {out_dir} already exists; pass --force to replace "
                          f"it or choose another --out")


def write_files(data: ReportData, out_dir: Path, force: bool) -> Path:
    """Write report.md, report.html and images/ (replacing only those when forced)."""
    html, md = render_html(data), render_markdown(data)
    if force:
        for name in OUTPUTS:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    for image in all_images(data):
        (images / image.name).write_bytes(image.png)
    (out_dir / "report.md").write_text(md)
    (out_dir / "report.html").write_text(html)
    return out_dir / "report.html"


def all_images(data: ReportData) -> list[Image]:
    found = [img for row in data.rows for img in (row.grid, row.curves) if img is not None]
    found += [s.plot for s in data.scaling if s.plot is not None]
    found += data.ood.images if data.ood is not None else []
    return found + [p for s in data.sweeps for p in s.plots]


# --- rendering -----------------------------------------------------------------------------------
def data_uri(image: Image) -> str:
    return "data:image/png;base64," + base64.b64encode(image.png).decode("ascii")


def code_ticks(text) -> markupsafe.Markup:
    """HTML: escape, then show `backticked` commands as <code>."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=autoescape,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(datauri=data_uri, mdcell=md_cell, ticks=code_ticks)
    env.globals.update(fmt=fmt, label=report_data.label, scaling_columns=SCALING_COLUMNS)
    return env


def column_groups(data: ReportData) -> list[tuple[str, int]]:
    groups: list[tuple[str, int]] = []
    for col in data.columns:
        if groups and groups[-1][0] == col.group:
            groups[-1] = (col.group, groups[-1][1] + 1)
        else:
            groups.append((col.group, 1))
    return groups


def render_html(data: ReportData) -> str:
    return environment(True).get_template("report.html.j2").render(d=data,
                                                                   groups=column_groups(data))


def render_markdown(data: ReportData) -> str:
    text = environment(False).get_template("report.md.j2").render(d=data)
    # Template tags at line ends eat newlines or leave blank runs: one blank line around headings.
    text = re.sub(r"\n+(#+ )", r"\n\n\1", text)
    return re.sub(r"\n{3,}", "\n\n", text)

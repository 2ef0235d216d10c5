"""`genbench report`: an experiment's MLflow runs -> DIR/report.md + a self-contained report.html.

The HTML embeds every image as a data: URI and loads nothing else (no CDN CSS, JS or fonts), so it
opens offline and can be mailed around. The Markdown links the same PNGs under DIR/images/. Both
are logged as artifacts of a new MLflow run tagged genbench.kind=report in the same experiment.
An existing report directory is never replaced without force=True, and force replaces only what
genbench wrote there: the files listed in DIR/report.manifest.json (see check_out_dir).
"""
from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path

import jinja2
import markupsafe

from pipeline import VERSION, schema, tracking
from pipeline.errors import ConfigError
from report import data as report_data
from report.collect import collect
from report.data import Image, ReportData, fmt
from report.scaling import COLUMNS as SCALING_COLUMNS

TEMPLATES = Path(__file__).parent / "templates"
OUTPUTS = ("report.md", "report.html", "images")  # what a report directory holds
MANIFEST = "report.manifest.json"  # the files genbench wrote into it: all that --force removes


def default_out_dir(experiment: str) -> Path:
    """reports/<experiment>, the name made one safe path part: an MLflow experiment name may
    hold `/` (e.g. /Users/me/exp) or `..`, and the report must stay under reports/."""
    name = re.sub(r"[/\\\x00]", "_", experiment) or "_"
    if name.startswith("."):  # ".", ".." and hidden names
        name = "_" + name
    return Path("reports") / name


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
        {schema.KIND: schema.REPORT, schema.VERSION: VERSION,
         schema.GIT_COMMIT: tracking.git_commit() or "unknown",
         schema.REPORT_OF: ",".join(r.run_id for r in data.rows)}, uri=uri)
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


def report_file(rel: str) -> bool:
    """Whether rel (a path inside a report directory) is one genbench writes there."""
    parts = rel.split("/")
    return (rel in ("report.md", "report.html", MANIFEST)
            or (len(parts) == 2 and parts[0] == "images" and parts[1].endswith(".png")
                and not parts[1].startswith(".")))


def manifest_files(out_dir: Path) -> set[str]:
    """The report files a previous report recorded in out_dir (entries that are not report
    files, e.g. `../x` from an edited manifest, are ignored: never deleted)."""
    try:
        listed = json.loads((out_dir / MANIFEST).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {f for f in listed if isinstance(f, str) and report_file(f)}


def _present(out_dir: Path) -> list[str]:
    """The files in out_dir where a report goes (report.md, report.html, images/...)."""
    found = [n for n in ("report.md", "report.html", MANIFEST) if (out_dir / n).exists()]
    images = out_dir / "images"
    if images.is_dir():
        found += [f"images/{p.name}" for p in sorted(images.iterdir())]
    elif images.exists():
        found.append("images")
    return found


def check_out_dir(out_dir: Path, force: bool) -> None:
    """A non-empty out_dir only with force, and then only if every file where a report goes
    was written by genbench (listed in its manifest): --force never deletes anyone else's
    files. Files elsewhere in out_dir (notes.txt, other folders) are left alone."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; pass a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ConfigError(f"report directory {out_dir} already exists; pass --force to replace "
                          f"it or choose another --out")
    if force and out_dir.is_dir():
        ours = manifest_files(out_dir) | {MANIFEST}
        foreign = [f for f in _present(out_dir) if f not in ours]
        if foreign:
            raise ConfigError(f"--force replaces only a report genbench wrote, and "
                              f"{out_dir / foreign[0]} is not listed in {out_dir / MANIFEST}; "
                              f"move it away or choose another --out")


def write_files(data: ReportData, out_dir: Path, force: bool) -> Path:
    """Write report.md, report.html and images/, after removing (when forced) the files of the
    previous report that its manifest lists; the manifest is written first, so that a report
    cut short is still known as genbench's."""
    html, md = render_html(data), render_markdown(data)
    images = all_images(data)
    files = ["report.md", "report.html"] + [f"images/{image.name}" for image in images]
    if force:
        check_out_dir(out_dir, force)  # again: something may have appeared since the start
        for rel in sorted(manifest_files(out_dir) - {MANIFEST}):
            (out_dir / rel).unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    manifest = {"genbench_report": data.experiment, "files": sorted(files)}
    tmp = out_dir / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / MANIFEST)
    for image in images:
        (out_dir / "images" / image.name).write_bytes(image.png)
    (out_dir / "report.md").write_text(md)
    (out_dir / "report.html").write_text(html)
    return out_dir / "report.html"


def all_images(data: ReportData) -> list[Image]:
    found = [img for row in data.rows for img in (row.grid, row.curves) if img is not None]
    found += [s.plot for s in data.scaling if s.plot is not None]
    found += data.ood.images if data.ood is not None else []
    found += [m.grid for m in data.memorization if m.grid is not None]
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


def column_groups(columns: list) -> list[tuple[str, int]]:
    groups: list[tuple[str, int]] = []
    for col in columns:
        if groups and groups[-1][0] == col.group:
            groups[-1] = (col.group, groups[-1][1] + 1)
        else:
            groups.append((col.group, 1))
    return groups


def results_tables(data: ReportData) -> list[dict]:
    """The HTML results as several narrow tables instead of one wide one (a 1400-px window
    shows each whole): the likelihood, encoder and other metrics with the training columns,
    then one table per sample-quality protocol, titled with that protocol. Each:
    {"title", "columns", "groups": [(group, number of columns)]}."""
    first = [c for c in data.columns if c.protocol is None]
    tables = [{"title": "", "columns": first}] if first else []
    for col in data.columns:
        if col.protocol is not None:
            if not tables or tables[-1]["columns"][0].protocol is None \
                    or tables[-1]["title"] != col.group:
                tables.append({"title": col.group, "columns": []})
            tables[-1]["columns"].append(col)
    for table in tables:
        table["groups"] = column_groups(table["columns"])
    return tables


def render_html(data: ReportData) -> str:
    return environment(True).get_template("report.html.j2").render(
        d=data, groups=column_groups(data.columns), tables=results_tables(data))


def render_markdown(data: ReportData) -> str:
    text = environment(False).get_template("report.md.j2").render(d=data)
    # Template tags at line ends eat newlines or leave blank runs: one blank line around headings.
    text = re.sub(r"\n+(#+ )", r"\n\n\1", text)
    return re.sub(r"\n{3,}", "\n\n", text)

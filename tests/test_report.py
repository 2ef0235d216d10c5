"""`genbench report`: rendered from real MLflow runs that the tests create in a private sqlite
store: one short real `genbench train` run (VAE), and runs whose metrics the tests log directly
to stand in for eval results, a GAN, an AE, a failed PixelCNN and a VAE sweep."""
from __future__ import annotations

import base64
import json
import os
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from report import references
from report.render import write_report
from report.data import fmt
from pipeline import tracking
from genbench.cli import main
from pipeline.errors import ConfigError
from pipeline.grids import grid_png

EXP = "report-test"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- building an experiment ----------------------------------------------------------------------
def random_grid(n: int = 16, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return grid_png(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g))


def logged_run(experiment: str, family: str, metrics_by_step: dict[int, dict],
               eval_metrics: dict | None = None, eval_tags: dict | None = None,
               status: str = "FINISHED", grid: str | None = "samples",
               dataset: str = "fashion-mnist", workers: int = 1,
               params: dict | None = None) -> str:
    """A train run as launch.train leaves it, with metrics logged here instead of trained."""
    tags = {"genbench.kind": "train", "genbench.model": family, "genbench.dataset": dataset,
            "hardware.cpu": "x86_64", "hardware.cpus": "2", "torch.version": torch.__version__,
            "genbench.version": "0.1.0"}
    params = {"model": family, "data.dataset": dataset, "train.workers": workers,
              "train.conditional": False,
              "train.batch_size": 64, "train.total_steps": max(metrics_by_step, default=0),
              **(params or {})}
    run_id = tracking.start_run(experiment, f"{family}-{dataset}", params, tags)
    logger = tracking.RunLogger(run_id, tracking.tracking_uri())
    for step, values in sorted(metrics_by_step.items()):
        logger.metrics(values, step)
    last = max(metrics_by_step, default=0)
    if eval_metrics:
        logger.metrics(eval_metrics, last)
    if eval_tags:
        tracking.set_tags(run_id, eval_tags)
    if grid:
        logger.figure_png(random_grid(), f"{grid}/step_{last:07d}.png")
    logger.close()
    tracking.end_run(run_id, status)
    return run_id


def gan_history(steps=(10, 20, 30, 40)) -> dict[int, dict]:
    return {s: {"d_loss": 1.4 - s / 100, "g_loss": 0.7 + s / 100, "d_real": 0.5 + s / 200,
                "d_fake": 0.5 - s / 200, "images_per_s": 300.0 + s, "lr_generator": 2e-4,
                "lr_discriminator": 2e-4, "peak_memory_mb": 900.0} for s in steps}


DOMAIN_TAGS = {"eval.domain.n_fake": "2000", "eval.domain.n_real": "2000",
               "eval.domain.reference_split": "test",
               "eval.domain.weights_sha256": "ab" * 32, "eval.seed": "0"}


def domain_metrics(fid: float) -> dict:
    return {"fid_domain": fid, "is_domain": 7.5, "is_domain_std": 0.12, "kid_domain": 0.031,
            "kid_domain_std": 0.002, "precision_domain": 0.61, "recall_domain": 0.43,
            "density_domain": 0.8734, "coverage_domain": 0.5125,
            "floor_fid_domain": 0.8, "floor_is_domain": 9.1, "floor_kid_domain": 0.0004,
            "floor_precision_domain": 0.77, "floor_recall_domain": 0.76,
            "floor_density_domain": 1.02, "floor_coverage_domain": 0.97}


def sweep_run(experiment: str) -> str:
    """A finished VAE beta sweep as tune.summary leaves it: results.csv, best_config.yaml,
    plots/ (the rate-distortion plot made by tune's own code), plus one child trial run."""
    from pipeline.config import Config
    from tune import summary

    parent = tracking.start_run(experiment, "tune-vae-fashion-mnist",
                                {"tune.metric": "val_bpd", "tune.mode": "min",
                                 "model": "vae"},
                                {"genbench.kind": "tune", "genbench.model": "vae",
                                 "genbench.dataset": "fashion-mnist"})
    rows = [summary.Row(f"trial_{i}", f"run{i}", "completed",
                        {"vae.beta": beta, "vae.lr": 1e-3},
                        {"val_bpd": 4.0 + abs(beta - 1), "val_kl": 30 / beta,
                         "val_recon": 2000 + 100 * beta, "step": 20})
                   for i, beta in enumerate((0.25, 1.0, 4.0))]
    child = tracking.start_run(experiment, "trial-001", {"vae.beta": 1.0},
                               {"genbench.kind": "tune-trial", "genbench.model": "vae",
                                "mlflow.parentRunId": parent})
    child_logger = tracking.RunLogger(child, tracking.tracking_uri())
    child_logger.metrics({"val_bpd": 4.0}, 20)
    child_logger.close()
    tracking.end_run(child)
    from tune.spec import SweepSpec
    vae = Config.from_dict({"model": "vae"}).to_dict()
    spec = SweepSpec(user_config=vae, trial_config=vae,
                     space={"vae.beta": {"loguniform": [0.1, 10]},
                            "vae.lr": {"loguniform": [1e-4, 1e-2]}},
                     metric="val_bpd", mode="min", scheduler="asha", search="random", samples=3,
                     steps=20, interval=10, experiment=experiment,
                     tracking_uri=tracking.tracking_uri(), fid_samples=100,
                     parent_run_id=parent)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        summary.write_all(rows, spec, Path(tmp))
    tracking.end_run(parent)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_local):
    """The main experiment: every family, eval stand-ins, a sweep; built once per module."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        # A real, short `genbench train` run: curves, samples, checkpoint as training logs them.
        assert main(["train", "--model", "vae", "--steps", "20", "--experiment", EXP,
                     "--set", "train.batch_size=16", "--set", "train.log_every=5",
                     "--set", "train.eval_every=10", "--set", "vae.width=8"]) == 0
        vae = tracking.search_runs(tracking.find_experiment(EXP), "tags.`genbench.model` = 'vae'")
        vae_id = vae[0].info.run_id
        # eval's results for it (stand-ins with eval's metric names and protocol tags)
        logger = tracking.RunLogger(vae_id, tracking.tracking_uri())
        logger.metrics(
            {"bpd_test": 4.321987654, "probe_accuracy": 0.7712, **domain_metrics(55.5)}, 20)
        logger.close()
        tracking.set_tags(vae_id, {**DOMAIN_TAGS, "eval.bpd": "IWAE bound, k=16",
                                   "eval.bpd.k": "16"})
        gan_id = logged_run(EXP, "gan", gan_history(), {
            **domain_metrics(31.25), "fid_inception": 88.123, "is_inception": 3.2,
            "is_inception_std": 0.05},
            {**DOMAIN_TAGS, "eval.inception.n_fake": "10000", "eval.inception.n_real": "10000",
             "eval.bpd": "not applicable: a GAN has no likelihood"})
        ae_id = logged_run(EXP, "ae", {s: {"mse": 0.1 / s, "val_mse": 0.11 / s,
                                           "images_per_s": 500.0 + s} for s in (5, 10, 15)},
                           {"mse_test": 0.0123, "psnr_test": 24.9, "probe_accuracy": 0.8},
                           grid="reconstructions")
        pixelcnn_id = logged_run(EXP, "pixelcnn", {5: {"bpd": 5.5, "images_per_s": 40.0}},
                                 status="FAILED", grid=None)
        sweep_id = sweep_run(EXP)
        yield {"root": root, "vae": vae_id, "gan": gan_id, "ae": ae_id,
               "pixelcnn": pixelcnn_id, "sweep": sweep_id, "mp": mp}


@pytest.fixture(scope="module")
def report(store):
    html = write_report(EXP, store["root"] / "out", quiet=True)
    return html, html.read_text(), (html.parent / "report.md").read_text()


# --- reading the HTML back -----------------------------------------------------------------------
class Page(HTMLParser):
    """Collects table cells of the results table, images, and every URL-bearing attribute."""

    URL_ATTRS = {"src", "href", "srcset", "action", "poster", "data", "formaction",
                 "xlink:href", "background", "manifest", "ping", "cite", "longdesc"}

    def __init__(self):
        super().__init__()
        self.cells: list[dict] = []     # {run_id, family, key, value, text}
        self.images: list[str] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attr, value)
        self.tags: list[str] = []
        self.styles: list[str] = []
        self._row: dict | None = None
        self._cell: dict | None = None
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for k, v in attrs:
            if k in self.URL_ATTRS and v is not None:
                self.urls.append((tag, k, v))
            if k == "style" and v:
                self.styles.append(v)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "style":
            self._in_style = True
        if tag == "tr" and "data-run-id" in a:
            self._row = {"run_id": a["data-run-id"], "family": a["data-family"]}
            if "data-seed" in a:
                self._row["data-seed"] = a["data-seed"]
        if tag == "td" and self._row is not None and "data-key" in a:
            self._cell = {**self._row, "key": a["data-key"], "value": a.get("data-value"),
                          "column": a.get("data-column", a["data-key"]), "text": ""}

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._cell["text"] = self._cell["text"].strip()
            self.cells.append(self._cell)
            self._cell = None
        if tag == "tr":
            self._row = None
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_style:
            self.styles.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


# --- tests ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_table_numbers_match_mlflow(store, report):
    _, html, md = report
    page = parse(html)
    c = tracking.client()
    checked = 0
    for cell in page.cells:
        run = c.get_run(cell["run_id"])
        key, metrics = cell["key"], run.data.metrics
        if key in metrics:
            assert float(cell["value"]) == metrics[key], cell
            assert cell["text"].startswith(fmt(metrics[key])), cell
            checked += 1
        elif key == "images_per_s_median":
            hist = [m.value for m in c.get_metric_history(run.info.run_id, "images_per_s")]
            assert float(cell["value"]) == pytest.approx(statistics.median(hist)), cell
            checked += 1
        elif key == "wall_seconds":
            assert float(cell["value"]) == (run.info.end_time - run.info.start_time) / 1000
        elif key in run.data.params:
            assert cell["text"] == run.data.params[key], cell
    by = {(x["family"], x["key"]): x for x in page.cells}
    # the rows and columns the runs above must produce, with their exact numbers
    assert float(by["vae", "bpd_test"]["value"]) == 4.321987654
    assert by["vae", "bpd_test"]["text"] == "4.322"
    assert float(by["gan", "fid_domain"]["value"]) == 31.25
    assert by["gan", "is_domain"]["text"] == "7.5 ± 0.12"
    assert float(by["gan", "fid_inception"]["value"]) == 88.123
    assert by["vae", "fid_inception"]["text"] == "—"          # not measured: a dash, not 0
    assert by["gan", "bpd_test"]["text"] == "n/a"              # a GAN has no likelihood
    assert by["ae", "fid_domain"]["text"] == "n/a"             # an AE cannot sample
    assert by["ae", "mse_test"]["text"] == "0.0123"
    assert by["vae", "mse_test"]["text"] == "n/a"             # eval gives the VAE bits/dim
    assert by["pixelcnn", "bpd_test"]["text"] == "—"
    assert by["gan", "train.workers"]["text"] == "1"
    assert checked >= 20
    # one row per family, and no row for the sweep's child trial run
    assert sorted({x["family"] for x in page.cells}) == ["ae", "gan", "pixelcnn", "vae"]
    assert {x["run_id"] for x in page.cells} == {store[f] for f in
                                                 ("ae", "gan", "pixelcnn", "vae")}
    # the Markdown table carries the same numbers
    rows = {line.split("|")[1].strip(): line for line in md.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in by_family(page)}
    assert set(rows) == {"ae", "gan", "pixelcnn", "vae"}
    for (fam, key), cell in by.items():
        assert f"| {cell['text']} |" in rows[fam], (fam, key)
    # the floor, logged by eval as floor_<metric>
    floor = md.split("## Floor", 1)[1].split("##", 1)[0]
    assert "FID (domain)" in floor and "| real train vs real test (domain: " in floor
    # in the results table's order: FID, KID, IS, precision, recall, density, coverage
    assert "2000 test images) | 0.8 | 0.0004 | 9.1 | 0.77 | 0.76 | 1.02 | 0.97 |" in floor
    assert "| density (domain) | coverage (domain) |" in floor


def by_family(page: Page) -> set[str]:
    return {x["family"] for x in page.cells}


def columns_of(page: Page) -> dict[str, dict[str, str]]:
    """data-column -> {family: text} for the cells that hold a number."""
    out: dict[str, dict[str, str]] = {}
    for x in page.cells:
        if x["value"] is not None and "data-seed" not in x:
            out.setdefault(x["column"], {})[x["family"]] = x["text"]
    return out


def test_fids_from_different_n_never_share_a_column(mlflow_uri, workdir):
    """The quick bench's shape: VAE and GAN evaluated on 2,000 samples, PixelCNN on 200. FID is
    biased by n, so PixelCNN's FID (and every other sample-quality number) gets its own column
    group, named with its n; KID stands beside FID in each group."""
    exp = "protocols"
    tags = {**DOMAIN_TAGS, "eval.domain.floor": "2000 real train images vs the reference"}
    logged_run(exp, "vae", {5: {"bpd": 5.0, "images_per_s": 50.0}},
               {**domain_metrics(55.5), "bpd_test": 4.3}, tags)
    logged_run(exp, "gan", gan_history((10,)), domain_metrics(31.25), tags)
    logged_run(exp, "pixelcnn", {5: {"bpd": 5.5, "images_per_s": 40.0}},
               {**domain_metrics(80.0), "floor_fid_domain": 6.9, "bpd_test": 3.9},
               {**tags, "eval.domain.n_fake": "200",
                "eval.domain.floor": "200 real train images vs the reference"})
    html = write_report(exp, workdir / "out", quiet=True).read_text()
    page = parse(html)
    columns = columns_of(page)
    fid_columns = {c: fams for c, fams in columns.items() if c.startswith("fid_domain")}
    assert len(fid_columns) == 2, fid_columns
    by_family = {fam: c for c, fams in fid_columns.items() for fam in fams}
    assert by_family["vae"] == by_family["gan"] != by_family["pixelcnn"]
    assert set(fid_columns[by_family["pixelcnn"]]) == {"pixelcnn"}
    for metric in ("kid", "is", "precision", "recall", "density", "coverage"):  # each bound one
        groups = [set(f) for c, f in columns.items() if c.startswith(f"{metric}_domain")]
        assert sorted(map(sorted, groups)) == [["gan", "vae"], ["pixelcnn"]], (metric, groups)
    # the group headers name the n; the likelihood column still holds every family
    assert "domain features: 2000 generated vs 2000 test images" in html
    assert "domain features: 200 generated vs 2000 test images" in html
    assert set(columns["bpd_test"]) == {"vae", "pixelcnn"}
    # KID right after FID in each group
    order = [x["column"] for x in page.cells if x["family"] == "vae"]
    fid = order.index(by_family["vae"])
    assert order[fid + 1].startswith("kid_domain")
    # a dash, never a number, where a family was measured under the other protocol; no false
    # "not measured yet" for it
    other = [x for x in page.cells if x["family"] == "pixelcnn"
             and x["column"] == by_family["vae"]]
    assert other and other[0]["text"] == "—"
    assert "not measured yet: FID" not in html
    # the floor moves with n too: two floor rows, each with its protocol
    floor = html.split('id="floor-table"', 1)[1].split("</table>", 1)[0]
    assert "200 real train images" in floor and "2000 real train images" in floor


def test_density_and_coverage_beside_precision_and_recall(mlflow_uri, workdir):
    """--metrics dc's density_<ext> and coverage_<ext> are results columns of their protocol's
    group, right after recall, higher-is-better, with the logged numbers (density may exceed 1);
    a family evaluated without dc gets a dash and a "not measured yet", never a number."""
    exp = "density-coverage"
    logged_run(exp, "vae", {5: {"bpd": 5.0, "images_per_s": 50.0}},
               {**domain_metrics(55.5), "bpd_test": 4.3}, DOMAIN_TAGS)
    logged_run(exp, "gan", gan_history((10,)),
               {**domain_metrics(31.25), "density_domain": 1.1875, "coverage_domain": 0.9412},
               DOMAIN_TAGS)
    without_dc = {k: v for k, v in {**domain_metrics(80.0), "bpd_test": 3.9}.items()
                  if "density" not in k
                  and "coverage" not in k}
    logged_run(exp, "flow", {5: {"bpd": 5.5, "images_per_s": 40.0}}, without_dc, DOMAIN_TAGS)
    html = write_report(exp, workdir / "out", quiet=True).read_text()
    md = (workdir / "out" / "report.md").read_text()
    page = parse(html)
    by = {(x["family"], x["key"]): x for x in page.cells}
    assert float(by["gan", "density_domain"]["value"]) == 1.1875
    assert by["gan", "density_domain"]["text"].startswith("1.188")
    assert by["gan", "coverage_domain"]["text"].startswith("0.9412")
    assert by["vae", "density_domain"]["text"].startswith("0.8734")
    assert by["vae", "coverage_domain"]["text"].startswith("0.5125")
    assert by["flow", "density_domain"]["text"] == "—"
    assert "not measured yet: density (domain), coverage (domain)" in html
    # one group: ... precision, recall, density, coverage, each headed with its arrow
    order = [x["key"] for x in page.cells if x["family"] == "gan"]
    recall = order.index("recall_domain")
    assert order[recall + 1:recall + 3] == ["density_domain", "coverage_domain"]
    for key, label in (("density_domain", "density ↑"), ("coverage_domain", "coverage ↑")):
        assert re.search(rf'<th data-column="{key}" title="higher is better">{label}</th>', html)
        assert f"| {label} (domain features: 2000 generated vs 2000 test images) |" in md
    # the Markdown rows carry the same numbers; the legends say which way is better
    gan_row = next(line for line in md.splitlines() if line.startswith("| gan |"))
    assert f"| {by['gan', 'density_domain']['text']} | {by['gan', 'coverage_domain']['text']} |" \
        in gan_row
    for text in (html, md):
        assert "precision, recall, density, coverage: higher is better" in text


@pytest.mark.slow
def test_images_are_embedded(store, report):
    html_path, html, md = report
    page = parse(html)
    # 4 grids or reconstructions (the failed PixelCNN has none), 4 curve plots, 1+ sweep plots
    assert len(page.images) >= 8
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    # the Markdown links the same PNGs next to it
    linked = re.findall(r"!\[[^\]]*\]\((images/[^)]+)\)", md)
    assert len(linked) == len(page.images)
    for rel in linked:
        assert (html_path.parent / rel).read_bytes().startswith(PNG_MAGIC)
    assert "rate-distortion" in html and "images/sweep_" in md


@pytest.mark.slow
def test_html_makes_no_external_request(report):
    _, html, _ = report
    page = parse(html)
    for tag, attr, value in page.urls:
        assert value.startswith("data:") or value.startswith("#"), (tag, attr, value[:80])
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    css = " ".join(page.styles)
    assert "@import" not in css
    assert all(u.strip("'\" ").startswith("data:") for u in re.findall(r"url\(([^)]*)\)", css))


@pytest.mark.slow
def test_sweep_and_report_run_in_mlflow(store, report):
    html_path, html, md = report
    assert "best_config.yaml" in html and "vae.beta=" in html
    c = tracking.client()
    exp = tracking.find_experiment(EXP)
    reports = tracking.search_runs(exp, "tags.`genbench.kind` = 'report'")
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    logged = set(tracking.list_artifacts(reports[0].info.run_id))
    assert {"report.md", "report.html"} <= logged
    got = c.download_artifacts(reports[0].info.run_id, "report.html", str(store["root"]))
    assert Path(got).read_text() == html
    assert reports[0].info.run_id in html


@pytest.mark.slow
def test_missing_pieces_still_render(store, tmp_path):
    exp = "report-partial"
    logged_run(exp, "gan", gan_history((10,)), status="FAILED", grid=None)
    vae = logged_run(exp, "vae", {10: {"bpd": 5.0, "val_bpd": 5.1, "images_per_s": 90.0},
                                  20: {"bpd": 4.8, "val_bpd": 4.9, "images_per_s": 95.0}})
    html_path = write_report(exp, tmp_path / "partial", quiet=True)
    html = html_path.read_text()
    md = (html_path.parent / "report.md").read_text()
    for text in (f"vae (run {vae}): no eval metrics yet (`genbench eval --run-id {vae}`)",
                 "FAILED, no finished run", "no sample grid logged",
                 "no sweep in this experiment", "ae: no training run",
                 "pixelcnn: no training run", "no floor"):
        assert text in md, text
    # the toy family is installed in the suite's venv (as beside `make run`): a plug-in without
    # a run in this experiment is not "missing"; a built-in is
    assert "toy: no training run" not in md and "flow: no training run" in md
    assert "Missing or incomplete" in html
    page = parse(html)
    assert {x["family"] for x in page.cells} == {"gan", "vae"}
    assert "Published numbers" not in md


def test_refuses_to_overwrite(mlflow_uri, workdir, tmp_path, capsys):
    logged_run(EXP, "gan", gan_history((10, 20)))
    out = tmp_path / "again"
    out.mkdir()
    (out / "report.html").write_text("an earlier report")
    with pytest.raises(ConfigError, match="--force"):
        write_report(EXP, out, quiet=True)
    capsys.readouterr()  # MLflow's own start-up lines from creating the store above
    assert main(["report", "--experiment", EXP, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genbench: error: report directory")
    assert (out / "report.html").read_text() == "an earlier report"  # untouched
    # not written by genbench (no manifest lists it): --force refuses to delete it too
    assert main(["report", "--experiment", EXP, "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report.html is not listed in" in err[0]
    assert (out / "report.html").read_text() == "an earlier report"


def test_force_replaces_only_what_genbench_wrote(mlflow_uri, workdir, tmp_path, capsys):
    """--force removes the files the previous report's manifest lists (a stale image too) and
    nothing else: a user's notes beside the report stay; a user's image in images/ (not in
    the manifest) makes it refuse, and a manifest edited to list ../x deletes nothing there."""
    logged_run(EXP, "gan", gan_history((10, 20)))
    out = tmp_path / "rep"
    assert main(["report", "--experiment", EXP, "--out", str(out)]) == 0
    manifest = json.loads((out / "report.manifest.json").read_text())
    listed = set(manifest["files"])
    assert {"report.md", "report.html"} <= listed and any(f.startswith("images/") for f in listed)
    assert listed == {str(p.relative_to(out)) for p in out.rglob("*")
                      if p.is_file() and p.name != "report.manifest.json"}
    stale = out / "images" / "curves_old.png"   # as a previous report with another row left it
    stale.write_bytes(PNG_MAGIC)
    manifest["files"] += ["images/curves_old.png", "../outside.txt"]
    (out / "report.manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "outside.txt").write_text("not the report's")
    (out / "notes.txt").write_text("mine")
    (out / "drafts").mkdir()
    (out / "drafts" / "a.md").write_text("mine too")
    capsys.readouterr()
    assert main(["report", "--experiment", EXP, "--out", str(out), "--force"]) == 0
    assert not stale.exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "drafts" / "a.md").read_text() == "mine too"
    assert (tmp_path / "outside.txt").read_text() == "not the report's"
    assert "genbench report: report-test" in (out / "report.html").read_text()
    assert "../outside.txt" not in (out / "report.manifest.json").read_text()

    mine = out / "images" / "my_plot.png"
    mine.write_bytes(PNG_MAGIC)
    capsys.readouterr()
    assert main(["report", "--experiment", EXP, "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "my_plot.png is not listed in" in err[0]
    assert mine.read_bytes() == PNG_MAGIC and (out / "report.md").is_file()


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs-exp", "a/../../b", ".."])
def test_experiment_names_never_leave_reports(name, mlflow_uri, workdir, capsys):
    """The default --out is reports/<experiment> with the name made one path part."""
    logged_run(name, "gan", gan_history((10, 20)))
    capsys.readouterr()
    assert main(["report", "--experiment", name]) == 0
    html = Path(capsys.readouterr().out.splitlines()[0])
    assert html.name == "report.html"
    assert html.resolve().parent.parent == (workdir / "reports").resolve()
    assert [p.name for p in workdir.iterdir() if p.name not in ("mlflow.db", "mlruns")] \
        == ["reports"]


def test_unknown_experiment_is_one_line(mlflow_uri, workdir, tmp_path, capsys):
    assert main(["report", "--experiment", "no-such-exp", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow experiment 'no-such-exp'" in err[0]
    assert not (tmp_path / "x").exists()


def test_references_only_on_exact_protocol():
    ref = references.Reference("gan", "Some GAN", "cifar10", "fid_inception", 30.0, "paper",
                               "arxiv.org/abs/0000.00000", n_fake=50000, n_real=50000)
    refs = (ref,)

    def match(*args, split="test", **kwargs):
        return references.matching(*args, references=refs, reference_split=split, **kwargs)

    assert match("gan", "cifar10", "fid_inception", 50000, 50000) == [ref]
    assert match("gan", "cifar10", "fid_inception", 10000, 50000) == []
    assert match("gan", "cifar10", "fid_inception", None, None) == []
    assert match("gan", "cifar10", "fid_inception", 50000, 50000, split="train") == []
    assert match("gan", "cifar10", "fid_inception", 50000, 50000, split=None) == []
    assert match("gan", "fashion-mnist", "fid_inception", 50000, 50000) == []
    domain = references.Reference("gan", "x", "cifar10", "fid_domain", 1.0, "s", "u", 50000)
    assert references.matching("gan", "cifar10", "fid_domain", 50000, None, (domain,),
                               "test") == []
    # likelihoods carry no extractor and no n: dataset, split, metric and config must match
    unconditional = {"train.conditional": "False"}
    assert [r.model for r in references.matching("pixelcnn", "cifar10", "bpd_test",
                                                 params=unconditional)] == \
        ["PixelCNN", "Gated PixelCNN"]
    assert references.matching("pixelcnn", "cifar10", "bpd_test",
                               params={"train.conditional": "True"}) == []  # log p(x|y)
    assert references.matching("vae", "cifar10", "bpd_test", params=unconditional) == []


LUCIC_RUN = {"gan.g_loss": "non-saturating", "train.conditional": "False"}


@pytest.mark.parametrize("dataset, value, spread", [("fashion-mnist", 26.5, 1.6),
                                                    ("mnist", 6.8, 0.5)])
def test_lucic_ns_gan_fid_only_under_its_protocol(dataset, value, spread):
    """Lucic et al. 2018 (as tabulated by Dai & Wipf 2019, Table 1): 10k samples against the
    10k test images, Inception features, an unconditional non-saturating GAN."""
    def match(n_fake=10000, n_real=10000, split="test", metric="fid_inception", params=None):
        return references.matching("gan", dataset, metric, n_fake, n_real, reference_split=split,
                                   params=LUCIC_RUN if params is None else params)

    [ref] = match()
    assert (ref.model, ref.value, ref.spread) == ("NS-GAN", value, spread)
    assert ref.shown == f"{value:g} ± {spread:g}"
    assert "10,000 generated" in ref.protocol and "test" in ref.protocol
    assert "Dai & Wipf 2019" in ref.source and "Table 1" in ref.source
    assert match(n_fake=5000) == [] and match(n_real=2000) == []      # FID is biased by n
    assert match(split="train") == [] and match(split=None) == []
    assert match(metric="fid_domain") == []                          # another extractor
    assert match(params={**LUCIC_RUN, "gan.g_loss": "minimax"}) == []  # not an NS-GAN
    assert match(params={**LUCIC_RUN, "train.conditional": "True"}) == []
    assert match(params={}) == []


@pytest.mark.slow
def test_references_shown_only_where_protocol_matches(store, tmp_path, report):
    _, html, md = report
    assert "Published numbers" not in html  # fashion-mnist: no reference has its protocol
    exp = "report-cifar"
    logged_run(exp, "pixelcnn", {10: {"bpd": 3.9, "images_per_s": 20.0}},
               {"bpd_test": 3.51}, {"eval.bpd": "exact"}, dataset="cifar10")
    logged_run(exp, "gan", gan_history((10,)), {"fid_inception": 40.0},
               {"eval.inception.n_fake": "5000"}, dataset="cifar10")
    page_html = write_report(exp, tmp_path / "cifar", quiet=True).read_text()
    assert "Published numbers under the same protocol" in page_html
    assert "Gated PixelCNN" in page_html and "3.03" in page_html
    section = page_html.split("Published numbers", 1)[1].split("</table>", 1)[0]
    assert "fid_inception" not in section  # no FID reference with n_fake = 5000

    exp = "report-lucic"
    inception = {"eval.inception.n_fake": "10000", "eval.inception.n_real": "10000",
                 "eval.inception.reference_split": "test"}
    logged_run(exp, "gan", gan_history((10,)), {"fid_inception": 30.0}, inception,
               params={"gan.g_loss": "non-saturating"})
    page_html = write_report(exp, tmp_path / "lucic", quiet=True).read_text()
    section = page_html.split("Published numbers", 1)[1].split("</table>", 1)[0]
    assert "NS-GAN" in section and "26.5 ± 1.6" in section and "10,000 generated" in section
    exp = "report-lucic-n2000"
    logged_run(exp, "gan", gan_history((10,)), {"fid_inception": 30.0},
               {**inception, "eval.inception.n_fake": "2000"},
               params={"gan.g_loss": "non-saturating"})
    assert "NS-GAN" not in write_report(exp, tmp_path / "n2000", quiet=True).read_text()


# --- a real browser ------------------------------------------------------------------------------
def chromium_or_skip():
    """The browser, else a skip on a developer's machine and a failure in CI (CI=true)."""
    from testing.chromium_check import find_chromium
    path = find_chromium()
    if path is None:
        why = "chromium is not installed (`make browser` or apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI must run the browser test")
        pytest.skip(why)
    return path


@pytest.mark.slow
def test_report_opens_in_headless_chromium(report, tmp_path):
    from testing.chromium_check import check_page
    chromium_or_skip()
    html_path, _, _ = report
    shot = tmp_path / "report.png"
    page = check_page(html_path, screenshot=shot)
    assert page.loaded and page.title == f"genbench report: {EXP}"
    assert page.errors == [], page.errors
    assert page.external_requests == [], page.external_requests
    assert shot.read_bytes().startswith(PNG_MAGIC)


def test_chromium_check_sees_errors_and_requests(tmp_path):
    """The browser check can fail: a page with a console error, an exception and a CDN link."""
    from testing.chromium_check import check_page
    chromium_or_skip()
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title><link rel="stylesheet" '
                   'href="https://cdn.example.com/x.css"></head><body><script>'
                   'console.error("boom"); missingFunction();</script></body></html>')
    page = check_page(bad, settle=0.5)
    assert any("boom" in e for e in page.errors)
    assert any("missingFunction" in e for e in page.errors)
    assert page.external_requests == ["https://cdn.example.com/x.css"]

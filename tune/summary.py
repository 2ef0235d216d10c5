"""What a finished sweep leaves in its parent MLflow run: the results table (results.csv), the
best config (best_config.yaml, for `genbench train --config`), the metric against each
hyperparameter (plots/*.png) and, for beta sweeps, the rate-distortion curve."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline import schema, tracking
from pipeline.config import Config
from tune import spaces
from tune.spec import SweepSpec
from tune.trial import STATUS_TAG, TRIAL_ID_TAG

# The parent run's artifact names: the report (report/sweeps.py) reads them by these names.
RESULTS_CSV = "results.csv"
BEST_CONFIG = "best_config.yaml"
PLOTS_DIR = "plots"
RATE_DISTORTION = "rate_distortion"   # plots/rate_distortion.png, beta sweeps only


@dataclass
class Row:
    trial: str
    run_id: str
    status: str
    sampled: dict
    metrics: dict        # the trial's last report

    def value(self, metric: str) -> float:
        v = self.metrics.get(metric)
        return float(v) if isinstance(v, (int, float)) else float("nan")


def collect(results, parent_run_id: str, uri: str) -> list[Row]:
    """One row per trial: Tune's last result joined with the trial's child run."""
    runs = {r.data.tags.get(TRIAL_ID_TAG): r for r in tracking.child_runs(parent_run_id, uri)}
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        run = runs.get(trial_id)
        status = run.data.tags.get(STATUS_TAG, "unknown") if run else "failed"
        if result.error is not None:
            status = "failed"
        rows.append(Row(trial_id, run.info.run_id if run else "", status,
                        dict(result.config or {}), metrics))
    return rows  # in the order Tune created the trials


def best(rows: list[Row], metric: str, mode: str) -> Row | None:
    scored = [r for r in rows if math.isfinite(r.value(metric)) and r.status != "failed"]
    if not scored:
        return None
    sign = 1 if mode == "min" else -1
    return min(scored, key=lambda r: sign * r.value(metric))


REPORTED = ("step", "train_seconds", "images_per_s")


def write_csv(rows: list[Row], keys: list[str], metric: str, path: Path) -> None:
    extra = sorted({k for r in rows for k, v in r.metrics.items()
                    if (k.startswith("val_") or k in REPORTED) and k != metric
                    and isinstance(v, (int, float))})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "mlflow_run_id", "status", *keys, metric, *extra])
        for r in rows:
            w.writerow([r.trial, r.run_id, r.status, *(r.sampled.get(k) for k in keys),
                        r.metrics.get(metric), *(r.metrics.get(k) for k in extra)])


def write_best_config(base: Config, row: Row, metric: str, parent_run_id: str,
                      path: Path) -> Config:
    cfg = spaces.apply(base, {k: v for k, v in row.sampled.items() if "." in k})
    header = (f"# best trial of sweep {parent_run_id} (trial {row.trial}, {metric} "
              f"{row.value(metric):.6g})\n# train it: genbench train --config {path.name}\n")
    path.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return cfg


STATUS_STYLE = {"completed": ("o", "C0"), "early_stopped": ("x", "C1"), "failed": ("s", "C3")}


def plot_metric_vs(rows: list[Row], key: str, metric: str, log_x: bool, best_row: Row | None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for status, (marker, color) in STATUS_STYLE.items():
        pts = [(r.sampled.get(key), r.value(metric)) for r in rows if r.status == status]
        pts = [(x, y) for x, y in pts if isinstance(x, (int, float)) and math.isfinite(y)]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=color, label=status.replace("_", "-"))
    if best_row is not None and isinstance(best_row.sampled.get(key), (int, float)):
        ax.scatter([best_row.sampled[key]], [best_row.value(metric)], marker="*", s=200,
                   facecolors="none", edgecolors="k", label="best")
    if log_x:
        from matplotlib.ticker import NullFormatter
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap
    ax.set_xlabel(key)
    ax.set_ylabel(f"{metric} (last report)")
    ax.legend(fontsize=7)
    ax.set_title(f"{metric} vs {key}", fontsize=9)
    return fig


def plot_rate_distortion(rows: list[Row], beta_key: str):
    """Final KL (rate) against reconstruction NLL (distortion) per beta, nats per image; None
    when the trials report no kl and recon."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = []
    for r in rows:
        kl = r.metrics.get("val_kl", r.metrics.get("kl"))
        recon = r.metrics.get("val_recon", r.metrics.get("recon"))
        beta = r.sampled.get(beta_key)
        if isinstance(kl, (int, float)) and isinstance(recon, (int, float)) and beta:
            pts.append((float(kl), float(recon), float(beta), r.status))
    if not pts:
        return None
    pts.sort()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.7", lw=1, zorder=1)
    sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts],
                    c=[math.log10(p[2]) for p in pts], cmap="viridis", zorder=2,
                    marker="o")
    for kl, recon, beta, status in pts:
        ax.annotate(f"β={beta:.2g}" + ("*" if status == "early_stopped" else ""),
                    (kl, recon), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fig.colorbar(sc, ax=ax, label="log10 beta")
    ax.set_xlabel("rate: KL(q(z|x) || p(z)) [nats/image]")
    ax.set_ylabel("distortion: -log p(x|z) [nats/image]")
    ax.set_title("rate-distortion across beta (* = early-stopped)", fontsize=9)
    return fig


def write_all(rows: list[Row], spec: SweepSpec, out_dir: Path) -> dict:
    """Write the sweep's artifacts under out_dir and log them to the parent run; returns
    {'best': Row | None, 'best_config': Path | None, 'files': [...]}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metric, mode, keys, space = spec.metric, spec.mode, spec.keys, spec.space
    base = spec.user()
    files = [out_dir / RESULTS_CSV]
    write_csv(rows, keys, metric, files[0])
    best_row = best(rows, metric, mode)
    best_path = None
    if best_row is not None:
        best_path = out_dir / BEST_CONFIG
        write_best_config(base, best_row, metric, spec.parent_run_id, best_path)
        files.append(best_path)
    plots = out_dir / PLOTS_DIR
    plots.mkdir(exist_ok=True)
    figures = [(plot_metric_vs(rows, k, metric, spaces.is_log(space, k), best_row),
                plots / f"{metric}_vs_{k}.png") for k in keys]
    beta = f"{base.model}.beta"
    if beta in keys:  # a beta sweep: rate-distortion, where trials report kl and recon
        figures.append((plot_rate_distortion(rows, beta), plots / f"{RATE_DISTORTION}.png"))
    for fig, path in figures:
        if fig is not None:
            path.write_bytes(tracking.png_bytes(fig))
            __import__("matplotlib.pyplot").pyplot.close(fig)
            files.append(path)
    logger = tracking.RunLogger(spec.parent_run_id, spec.tracking_uri)
    for path in files:
        logger.artifact(path, PLOTS_DIR if path.parent == plots else None)
    if best_row is not None:
        logger.metrics({f"best_{metric}": best_row.value(metric)}, 0)
        tracking.set_tags(spec.parent_run_id, {schema.BEST_TRIAL: best_row.trial,
                                               schema.BEST_RUN_ID: best_row.run_id},
                          spec.tracking_uri)
    logger.close()  # the writer is asynchronous: everything is written when this returns
    return {"best": best_row, "best_config": best_path, "files": files}

"""The report's scaling section: wall-clock images/s and time to a target validation metric of the
bench's scaling runs (tag genbench.kind=scaling: one family, the same global batch and steps, with
1, 2, ... workers on CPU, and on GPU where one was used), read from their MLflow metrics alone.

- images/s: the images between the first and the last logged step over the time between those two
  points (MLflow timestamps, taken in the loop when each point was measured), so logging,
  validation and checkpoints inside that span count.
- start of training: one logged interval before the first point (that point's images_per_s is
  wall-clock, so it says how long the interval took); start-up = from the MLflow run's start
  (before Ray starts the workers) to the start of training.
- time to target: from the start of training to the first validation point at or past the target
  (the preset's scaling.target, else the best value that every run of the family reached).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline import schema, tracking
from report.data import Image, fmt, fmt_seconds

DEVICE_TAG, TARGET_TAG = schema.SCALING_DEVICE, schema.SCALING_TARGET


@dataclass
class ScalingRun:
    run_id: str
    device: str                          # cpu | gpu
    workers: int
    cpus_per_worker: str
    batch: int
    steps: int
    status: str
    hardware: str
    images_per_s: float | None = None
    start_up_s: float | None = None
    to_target_s: float | None = None     # from the start of training
    final: float | None = None           # the last validation value
    speedup: float | None = None         # images/s over the same device's 1-worker run
    curve: list = field(default_factory=list)   # (seconds since training start, value)

    @property
    def to_target_total_s(self) -> float | None:
        if self.to_target_s is None or self.start_up_s is None:
            return None
        return self.to_target_s + self.start_up_s


@dataclass
class ScalingSection:
    model: str
    metric: str
    mode: str
    target: float | None
    target_note: str
    runs: list[ScalingRun]
    plot: Image | None = None
    notes: list[str] = field(default_factory=list)

    def cells(self, run: ScalingRun) -> list[str]:
        """The table's cells of one run, in the order of COLUMNS."""
        return [run.device.upper(), str(run.workers), run.cpus_per_worker,
                f"{run.steps} x {run.batch}", fmt(run.images_per_s),
                f"{run.speedup:.2f}x" if run.speedup is not None else "—",
                fmt_seconds(run.start_up_s), fmt_seconds(run.to_target_s),
                fmt_seconds(run.to_target_total_s), fmt(run.final), run.hardware,
                run.run_id[:8] + ("" if run.status == "FINISHED" else f" ({run.status.lower()})")]


COLUMNS = ("device", "workers", "CPUs per worker", "steps x batch", "images/s (wall-clock)",
           "speed-up", "start-up", "time to target", "to target, start-up included",
           "final {metric}", "hardware", "run")


def collect_scaling(runs: list, uri: str, with_images: bool = True) -> list[ScalingSection]:
    """One section per family that has scaling runs (newest runs first in `runs`)."""
    from pipeline.models import FAMILIES

    mine = [r for r in runs if schema.kind(r.data.tags) == schema.SCALING]
    sections = []
    for model in sorted({r.data.tags.get(schema.MODEL, "?") for r in mine}):
        family = FAMILIES.get(model)
        metric = getattr(family, "SWEEP_METRIC", None) or "val_loss"
        mode = getattr(family, "SWEEP_MODE", "min")
        group = [r for r in mine if r.data.tags.get(schema.MODEL) == model]
        measured = [measure(r, metric, uri) for r in group]
        section = ScalingSection(model, metric, mode, None, "", measured)
        set_target(section, group)
        for run in measured:
            run.to_target_s = time_to(run.curve, section.target, mode)
        set_speedups(measured)
        measured.sort(key=lambda r: (r.device, r.workers, r.run_id))
        for run in measured:
            if run.images_per_s is None:
                section.notes.append(f"run {run.run_id[:8]} ({run.device}, {run.workers} "
                                     f"workers) logged fewer than two points: no images/s")
        if with_images:
            png = scaling_png(section)
            section.plot = Image(f"scaling_{model}.png", png,
                                 f"{model}: images/s by workers, and {metric} over wall time "
                                 f"from the start of training") if png else None
        sections.append(section)
    return sections


def measure(run, metric: str, uri: str) -> ScalingRun:
    p, t = run.data.params, run.data.tags
    batch = int(p.get("train.batch_size", 0) or 0)
    out = ScalingRun(run.info.run_id, t.get(DEVICE_TAG, "gpu" if p.get("train.gpu") == "True"
                                                 else "cpu"),
                     int(p.get("train.workers", 1)), p.get("train.cpus_per_worker", "?"), batch,
                     int(p.get("train.total_steps", p.get("train.steps", 0)) or 0),
                     run.info.status, t.get(schema.HARDWARE_GPU) if t.get(DEVICE_TAG) == "gpu"
                     else t.get(schema.HARDWARE_CPU, "?"))
    ips = tracking.metric_history_timed(run.info.run_id, "images_per_s", uri)
    if not ips or not batch:
        return out
    (s0, v0, t0), (s1, _, t1) = ips[0], ips[-1]
    if len(ips) >= 2 and t1 > t0:
        out.images_per_s = (s1 - s0) * batch / (t1 - t0)
    start = t0 - s0 * batch / v0 if v0 > 0 else None
    if start is not None:
        out.start_up_s = max(0.0, start - run.info.start_time / 1000)
        val = tracking.metric_history_timed(run.info.run_id, metric, uri)
        out.curve = [(ts - start, v) for _, v, ts in val]
        out.final = val[-1][1] if val else None
    return out


def set_target(section: ScalingSection, runs: list) -> None:
    given = {r.data.tags[TARGET_TAG] for r in runs if TARGET_TAG in r.data.tags}
    if given:
        section.target = float(sorted(given)[0])
        section.target_note = f"the preset's target, {section.metric} = {fmt(section.target)}"
        if len(given) > 1:
            section.notes.append(f"runs were given several targets ({', '.join(sorted(given))}); "
                                 f"the table uses {fmt(section.target)}")
        return
    best = [pick((v for _, v in r.curve), section.mode) for r in section.runs if r.curve]
    if best:
        worst = max(best) if section.mode == "min" else min(best)
        section.target = worst
        section.target_note = (f"{section.metric} = {fmt(worst)}, the best value every run "
                               f"reached (the preset gives no target)")
    section.target_note = section.target_note or f"no {section.metric} points logged"


def pick(values, mode: str = "min"):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return (min(values) if mode == "min" else max(values)) if values else math.inf


def time_to(curve: list, target: float | None, mode: str) -> float | None:
    if target is None:
        return None
    for seconds, value in curve:
        if (value <= target) if mode == "min" else (value >= target):
            return seconds
    return None


def set_speedups(runs: list[ScalingRun]) -> None:
    for run in runs:
        base = [r for r in runs if r.device == run.device and r.workers == 1
                and r.batch == run.batch and r.steps == run.steps and r.images_per_s]
        if base and run.images_per_s:
            run.speedup = run.images_per_s / base[0].images_per_s


def scaling_png(section: ScalingSection) -> bytes | None:
    """Left: images/s against workers per device, beside linear scaling from 1 worker. Right:
    the validation metric against seconds since the start of training, one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.tracking import png_bytes

    runs = [r for r in section.runs if r.images_per_s or r.curve]
    if not runs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.3))
    for device in sorted({r.device for r in runs}):
        mine = sorted((r for r in runs if r.device == device and r.images_per_s),
                      key=lambda r: r.workers)
        if not mine:
            continue
        workers = [r.workers for r in mine]
        line, = left.plot(workers, [r.images_per_s for r in mine], "o-",
                          label=f"{device.upper()} measured")
        one = next((r.images_per_s for r in mine if r.workers == 1), None)
        if one and len(workers) > 1:
            left.plot(workers, [one * w for w in workers], ls=":", color=line.get_color(),
                      label=f"{device.upper()} linear from 1 worker")
    left.set_xlabel("workers", fontsize=8)
    left.set_ylabel("images/s (wall-clock)", fontsize=8)
    left.set_xticks(sorted({r.workers for r in runs}))
    left.set_ylim(bottom=0)
    left.set_title("throughput", fontsize=9)
    for run in runs:
        if run.curve:
            seconds, values = zip(*run.curve)
            right.plot(seconds, values, "o-", ms=3,
                       label=f"{run.device.upper()} x {run.workers}")
    if section.target is not None:
        right.axhline(section.target, color="0.5", ls="--", lw=0.8, label="target")
    right.set_xlabel("seconds since the start of training", fontsize=8)
    right.set_title(section.metric, fontsize=9)
    for ax in (left, right):
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{section.model}: scaling with workers", fontsize=10)
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data

"""Training curves as PNG bytes (matplotlib, headless): what the report shows of each run's path.

One panel per loss term with its validation twin dashed beside it, and the panels a family
declares (CURVE_PANELS), e.g. the GAN's D(x) and D(G(z)) with the game's optimum at 0.5:
    {title: {"labels": {metric key: label}, "line": y of a reference line, "ylim": (low, high),
             "note": caption text}}     (all but labels optional)
"""
from __future__ import annotations

import math

Series = list[tuple[int, float]]

# Logged per step but not a loss: left out of the curves.
NOT_CURVES = ("images_per_s", "peak_memory_mb", "epoch", "step", "train_seconds")


def is_curve(key: str, points: Series) -> bool:
    return (len(points) >= 2 and key not in NOT_CURVES and not key.startswith("lr")
            and not key.startswith("floor_"))


def panels(histories: dict[str, Series], declared: dict | None = None
           ) -> list[tuple[str, dict[str, Series]]]:
    """Group histories into panels: [(title, {label: points})]; val_x joins x's panel, and the
    keys of a declared panel go to that panel."""
    declared = declared or {}
    curves = {k: v for k, v in histories.items() if is_curve(k, v)}
    claimed = {k for spec in declared.values() for k in spec["labels"]}
    grouped: dict[str, dict[str, Series]] = {}
    for key in sorted(curves, key=lambda k: (k.startswith("val_"), k)):
        if key in claimed:
            continue
        base = key[4:] if key.startswith("val_") else key
        grouped.setdefault(base, {})["val" if key.startswith("val_") else "train"] = curves[key]
    out = list(grouped.items())
    for title, spec in declared.items():
        series = {label: curves[k] for k, label in spec["labels"].items() if k in curves}
        if series:
            out.append((title, series))
    return out


def training_curves_png(title: str, histories: dict[str, Series],
                        declared: dict | None = None) -> bytes | None:
    """A row of panels for one run, or None when it logged no curve (e.g. a run that failed
    before its first log interval). declared: the family's CURVE_PANELS."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.tracking import png_bytes

    declared = declared or {}
    groups = panels(histories, declared)
    if not groups:
        return None
    cols = min(4, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, series) in zip(axes.flat, groups):
        for label, points in series.items():
            steps, values = zip(*points)
            style = {"ls": "--", "marker": "o", "ms": 3} if label == "val" else {}
            ax.plot(steps, values, label=label, lw=1.2, **style)
        line = declared.get(name, {}).get("line")
        if line is not None:
            ax.axhline(line, color="0.6", lw=0.8, ls=":", label=f"optimum {line:g}")
        if declared.get(name, {}).get("ylim"):
            low, high = declared[name]["ylim"]
            ax.set_ylim(low - 0.02 * (high - low), high + 0.02 * (high - low))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(series) > 1 or "val" in series or line is not None:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data

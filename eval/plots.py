"""Training curves as PNG bytes (matplotlib, headless): what the report shows of each run's path.

One panel per loss term with its validation twin dashed beside it; for the GAN one more panel with
D(x) and D(G(z)), which meet at 0.5 at the game's optimum.
"""
from __future__ import annotations

import math

Series = list[tuple[int, float]]

# Logged per step but not a loss: left out of the curves.
NOT_CURVES = ("images_per_s", "peak_memory_mb", "epoch", "step", "train_seconds")
DISCRIMINATOR = {"d_real": "D(x)", "d_fake": "D(G(z))"}


def is_curve(key: str, points: Series) -> bool:
    return (len(points) >= 2 and key not in NOT_CURVES and not key.startswith("lr")
            and not key.startswith("floor_"))


def panels(histories: dict[str, Series]) -> list[tuple[str, dict[str, Series]]]:
    """Group histories into panels: [(title, {label: points})]; val_x joins x's panel."""
    curves = {k: v for k, v in histories.items() if is_curve(k, v)}
    grouped: dict[str, dict[str, Series]] = {}
    for key in sorted(curves, key=lambda k: (k.startswith("val_"), k)):
        if key in DISCRIMINATOR:
            continue
        base = key[4:] if key.startswith("val_") else key
        grouped.setdefault(base, {})["val" if key.startswith("val_") else "train"] = curves[key]
    out = list(grouped.items())
    d = {label: curves[k] for k, label in DISCRIMINATOR.items() if k in curves}
    if d:
        out.append(("discriminator output", d))
    return out


def training_curves_png(title: str, histories: dict[str, Series]) -> bytes | None:
    """A row of panels for one run, or None when it logged no curve (e.g. a run that failed
    before its first log interval)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.tracking import png_bytes

    groups = panels(histories)
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
        if name == "discriminator output":
            ax.axhline(0.5, color="0.6", lw=0.8, ls=":", label="optimum 0.5")
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(series) > 1 or "val" in series or name == "discriminator output":
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data

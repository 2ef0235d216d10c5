"""Histograms of OOD scores as PNG bytes (matplotlib, headless): in-distribution vs each OOD set,
one row per score, one column per set, each panel with its own bins."""
from __future__ import annotations

import torch

from eval.ood.scores import LABELS


def score_histograms_png(title: str, scores: dict[str, dict[str, torch.Tensor]],
                         in_key: str = "in") -> bytes | None:
    """scores: {score: {"in": (N,), set: (M,), ...}} -> one PNG, or None when empty."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.tracking import png_bytes

    rows = [s for s in scores if any(k != in_key for k in scores[s])]
    sets = sorted({k for s in rows for k in scores[s] if k != in_key})
    if not rows or not sets:
        return None
    fig, axes = plt.subplots(len(rows), len(sets), figsize=(2.4 * len(sets), 1.9 * len(rows)),
                             squeeze=False)
    for r, score in enumerate(rows):
        for c, name in enumerate(sets):
            ax = axes[r][c]
            if name not in scores[score]:
                ax.axis("off")
                continue
            a, b = scores[score][in_key].float(), scores[score][name].float()
            lo, hi = min(a.min(), b.min()).item(), max(a.max(), b.max()).item()
            bins = torch.linspace(lo, hi if hi > lo else lo + 1, 41).tolist()
            ax.hist(a.numpy(), bins=bins, density=True, alpha=0.55, label="in-dist.",
                    color="tab:blue")
            ax.hist(b.numpy(), bins=bins, density=True, alpha=0.55, label=name,
                    color="tab:red")
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(LABELS.get(score, score), fontsize=7)
            if r == 0 and c == 0:
                ax.legend(fontsize=6)
    fig.suptitle(title + "  (higher score = more out of distribution)", fontsize=9)
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data

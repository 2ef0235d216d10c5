"""Sample grids as PNG bytes: what a person looks at to judge a generative model."""
from __future__ import annotations

import io

import torch


def grid_png(images: torch.Tensor, nrow: int = 8) -> bytes:
    """uint8 (N, C, H, W) -> PNG bytes of an nrow-wide grid."""
    from PIL import Image
    # Here, not at the top: torchvision's import (~1 s, it loads torch._dynamo) would be paid
    # by every training worker at start-up, before its first step.
    from torchvision.utils import make_grid

    grid = make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=255)  # (C, H, W) uint8
    buf = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def recon_pairs(real: torch.Tensor, recon: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Interleave rows of originals and their reconstructions: row 2i real, row 2i+1 recon."""
    rows = []
    for start in range(0, real.shape[0], nrow):
        rows += [real[start:start + nrow].cpu(), recon[start:start + nrow].cpu()]
    return torch.cat(rows)

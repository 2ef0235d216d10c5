"""A model family that no genbench source file knows, found through its `genbench.families`
entry point (pyproject.toml beside this file).

The toy is a table of independent 256-way softmaxes, one per sub-pixel: an exact likelihood
and a sampler, and on purpose no validation loss (SWEEP_METRIC None), so its sweep runs on the
small-sample FID that any such family gets. Contract v2 (pipeline/models/__init__.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Config:
    lr: float = 0.05


PHASES = ("model",)
PROGRESS_KEYS = ("bpd",)
TUNE_SPACE = {"lr": {"loguniform": [0.01, 0.1]}}
SWEEP_METRIC, SWEEP_MODE = None, "min"
LIKELIHOOD = "exact"
LIKELIHOOD_NOTE = "exact: an independent 256-way softmax per sub-pixel"
GRID_SIZE = 16
DDP_OPTIONS: dict[str, dict] = {}


class PixelTable(nn.Module):
    def __init__(self, image_shape, num_classes: int):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.logits = nn.Parameter(torch.zeros(256, *image_shape))        # uniform at start
        self.class_bias = (nn.Parameter(torch.zeros(num_classes, 256, *image_shape))
                           if num_classes else None)

    def forward(self, n: int, y=None) -> torch.Tensor:
        """Logits (n, 256, C, H, W)."""
        logits = self.logits.expand(n, *self.logits.shape)
        return logits + self.class_bias[y] if self.class_bias is not None else logits


def build(cfg: Config, image_shape, num_classes: int) -> dict[str, nn.Module]:
    return {"model": PixelTable(image_shape, num_classes)}


def make_optimizers(cfg: Config, nets) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(nets["model"].parameters(), lr=cfg.lr)}


def _nats(nets, x, y) -> torch.Tensor:
    logits = nets["model"](x.shape[0], y)
    return F.cross_entropy(logits.float(), x.long(), reduction="none").flatten(1).sum(1)


def loss(cfg: Config, nets, x, y, phase: str) -> dict[str, torch.Tensor]:
    per_dim = _nats(nets, x, y).mean() / x[0].numel()
    return {"loss": per_dim, "bpd": per_dim.detach() / math.log(2)}


@torch.no_grad()
def nll(cfg: Config, nets, x, y=None, k: int = 1) -> torch.Tensor:
    return _nats(nets, x, y)


@torch.no_grad()
def sample(cfg: Config, nets, n: int, labels=None, device="cpu") -> torch.Tensor:
    model = getattr(nets["model"], "module", nets["model"])
    logits = model(n, labels).float().movedim(1, -1)                   # (n, C, H, W, 256)
    return torch.distributions.Categorical(logits=logits).sample().to(torch.uint8)

"""Autoencoder: x -> z -> x_hat, trained on ||x_hat - x||^2. After training the encoder is the
useful part (linear probes in eval use it). It has no likelihood and no prior to sample from."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.layers import ConvDecoder, ConvEncoder, to_float, to_uint8, unwrap, with_labels


@dataclass(frozen=True)
class Config:
    latent_dim: int = 32
    width: int = 32
    lr: float = 1e-3


PHASES = ("model",)
PROGRESS_KEYS = ("mse",)
TUNE_SPACE = {"lr": {"loguniform": [1e-4, 3e-3]}}
SWEEP_METRIC, SWEEP_MODE = "val_mse", "min"
LIKELIHOOD = None
LIKELIHOOD_NOTE = "an autoencoder has no likelihood (see mse_test, psnr_test)"
GRID_SIZE = 64
TINY = {"width": 8, "latent_dim": 8}  # tests, --smoke: seconds on 2 cores
DDP_OPTIONS: dict[str, dict] = {}


class AutoEncoder(nn.Module):
    def __init__(self, cfg: Config, image_shape, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = ConvEncoder(image_shape, cfg.width, cfg.latent_dim, num_classes)
        self.decoder = ConvDecoder(image_shape, cfg.width, cfg.latent_dim + num_classes,
                                   image_shape[0])

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        z = self.encoder(x, y)
        return torch.tanh(self.decoder(with_labels(z, y, self.num_classes)))


def build(cfg: Config, image_shape, num_classes: int) -> dict[str, nn.Module]:
    return {"model": AutoEncoder(cfg, image_shape, num_classes)}


def make_optimizers(cfg: Config, nets) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(nets["model"].parameters(), lr=cfg.lr)}


def loss(cfg: Config, nets, x: torch.Tensor, y, phase: str) -> dict[str, torch.Tensor]:
    xf = to_float(x)
    mse = F.mse_loss(nets["model"](xf, y), xf)
    return {"loss": mse, "mse": mse.detach()}


@torch.no_grad()
def reconstruct(cfg: Config, nets, x: torch.Tensor, y=None) -> torch.Tensor:
    return to_uint8(unwrap(nets["model"])(to_float(x), y))


@torch.no_grad()
def encode(cfg: Config, nets, x: torch.Tensor, y=None) -> torch.Tensor:
    return unwrap(nets["model"]).encoder(to_float(x), y)

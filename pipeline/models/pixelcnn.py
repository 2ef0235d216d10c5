"""Gated PixelCNN (van den Oord et al. 2016): p(x) = prod_t p(x_t | x_<t) over pixels in raster
order and, within a pixel, over channels; each sub-pixel is a 256-way softmax, so the NLL is exact.

A vertical stack sees the rows above; a horizontal stack sees the pixels to the left in the
current row; the vertical stack feeds the horizontal one shifted down by a row, which removes
the blind spot of masked 3x3 convolutions. Gates are tanh(a) * sigmoid(b), with a per-class bias
when conditional.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.layers import to_float, unwrap


@dataclass(frozen=True)
class Config:
    # Sized for CPUs (about 0.13 MMAC per pixel); the bench's full preset widens it for GPUs.
    channels: int = 32
    layers: int = 6
    kernel: int = 3          # odd; every layer, the first included
    head_channels: int = 64
    lr: float = 1e-3

    def validate(self) -> None:
        if self.kernel % 2 == 0 or self.kernel < 3:
            raise ValueError(f"pixelcnn.kernel must be odd and >= 3, got {self.kernel}")


PHASES = ("model",)
PROGRESS_KEYS = ("bpd",)
TUNE_SPACE = {"lr": {"loguniform": [1e-4, 3e-3]}}
SWEEP_METRIC, SWEEP_MODE = "val_bpd", "min"
LIKELIHOOD = "exact"
LIKELIHOOD_NOTE = "exact: autoregressive, 256-way softmax per sub-pixel"
GRID_SIZE = 16   # sampling costs H * W * C forward passes
DDP_OPTIONS: dict[str, dict] = {}
# Published numbers the report shows beside ours, only under the same protocol (see
# eval/references.py): test NLL on CIFAR-10, 8-bit pixels, 256-way softmax.
REFERENCES = (
    {"model": "PixelCNN", "dataset": "cifar10", "metric": "bpd_test", "value": 3.14,
     "source": "van den Oord et al. 2016, Pixel Recurrent Neural Networks, Table 5",
     "url": "arxiv.org/abs/1601.06759", "note": "test NLL, bits/dim"},
    {"model": "Gated PixelCNN", "dataset": "cifar10", "metric": "bpd_test", "value": 3.03,
     "source": "van den Oord et al. 2016, Conditional Image Generation with PixelCNN "
               "Decoders, Table 1", "url": "arxiv.org/abs/1606.05328",
     "note": "test NLL, bits/dim"},
)


class GatedLayer(nn.Module):
    def __init__(self, in_ch: int, ch: int, k: int, first: bool, num_classes: int):
        super().__init__()
        self.k, self.first = k, first
        self.v_conv = nn.Conv2d(in_ch, 2 * ch, (k // 2 + 1, k))    # rows i-k//2 .. i
        self.v_to_h = nn.Conv2d(2 * ch, 2 * ch, 1)
        # the first layer must not see the current pixel: columns j-k//2 .. j-1 only
        self.h_conv = nn.Conv2d(in_ch, 2 * ch, (1, k // 2 if first else k // 2 + 1))
        self.h_out = nn.Conv2d(ch, ch, 1)
        self.cond = nn.Embedding(num_classes, 2 * ch) if num_classes else None

    @staticmethod
    def gate(x):
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v, h, y):
        k = self.k
        v_feat = self.v_conv(F.pad(v, (k // 2, k // 2, k // 2, 0)))      # (B, 2ch, H, W)
        v_down = F.pad(v_feat, (0, 0, 1, 0))[:, :, :-1]                  # rows < i only
        h_feat = self.h_conv(F.pad(h, (k // 2, 0, 0, 0)))
        if self.first:  # width k//2 gives W + 1 outputs; output j sees columns j-k//2 .. j-1
            h_feat = h_feat[..., :-1]
        h_feat = h_feat + self.v_to_h(v_down)
        if self.cond is not None:
            bias = self.cond(y)[:, :, None, None]
            v_feat, h_feat = v_feat + bias, h_feat + bias
        v_new = self.gate(v_feat)
        h_new = self.h_out(self.gate(h_feat))
        return v_new, (h_new if self.first else h + h_new)  # no residual: x_t itself


class PixelCNN(nn.Module):
    def __init__(self, cfg: Config, image_shape, num_classes: int):
        super().__init__()
        c = image_shape[0]
        self.c, self.image_shape = c, tuple(image_shape)   # sample() reads the shape here
        self.layers = nn.ModuleList(
            GatedLayer(c if i == 0 else cfg.channels, cfg.channels, cfg.kernel, i == 0,
                       num_classes) for i in range(cfg.layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(cfg.channels, cfg.head_channels, 1),
                                  nn.ReLU(), nn.Conv2d(cfg.head_channels, c * 256, 1))
        # Channel order within a pixel (R before G before B): channel c's logits also see the
        # current pixel's channels < c through a masked 1x1 conv.
        if c > 1:
            self.channel_mix = nn.Conv2d(c, c * 256, 1, bias=False)
            mask = torch.zeros(c * 256, c, 1, 1)
            for out_c in range(c):
                mask[out_c * 256:(out_c + 1) * 256, :out_c] = 1
            self.register_buffer("channel_mask", mask, persistent=False)

    def forward(self, xf: torch.Tensor, y=None) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> logits (B, 256, C, H, W)."""
        v = h = xf
        for layer in self.layers:
            v, h = layer(v, h, y)
        logits = self.head(h)
        if self.c > 1:
            logits = logits + F.conv2d(xf, self.channel_mix.weight * self.channel_mask)
        b, _, hh, ww = logits.shape
        return logits.view(b, self.c, 256, hh, ww).transpose(1, 2)


def build(cfg: Config, image_shape, num_classes: int) -> dict[str, nn.Module]:
    return {"model": PixelCNN(cfg, image_shape, num_classes)}


def make_optimizers(cfg: Config, nets) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(nets["model"].parameters(), lr=cfg.lr)}


def _nll_per_image(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), x.long(), reduction="none").flatten(1).sum(1)


def loss(cfg: Config, nets, x: torch.Tensor, y, phase: str) -> dict[str, torch.Tensor]:
    nll_nats = _nll_per_image(nets["model"](to_float(x), y), x)
    loss_value = nll_nats.mean() / x[0].numel()
    return {"loss": loss_value, "bpd": loss_value.detach() / math.log(2)}


@torch.no_grad()
def nll(cfg: Config, nets, x: torch.Tensor, y=None, k: int = 1) -> torch.Tensor:
    """Exact -log p(x) in nats per image (B,)."""
    return _nll_per_image(unwrap(nets["model"])(to_float(x), y), x)


@torch.no_grad()
def sample(cfg: Config, nets, n: int, labels=None, device="cpu", progress=None) -> torch.Tensor:
    """Ancestral sampling, one sub-pixel at a time: H * W * C forward passes. Row i depends only
    on rows <= i (convolutions pad at the top and left only), so each pass sees rows 0..i: exact,
    and about half the work of full-image passes."""
    model = unwrap(nets["model"])
    c, h, w = model.image_shape
    x = torch.zeros(n, c, h, w, dtype=torch.uint8, device=device)
    for i in range(h):
        for j in range(w):
            for ch in range(c):
                rows = to_float(x[:, :, :i + 1])
                logits = model(rows, labels)[:, :, ch, i, j].float()   # (n, 256)
                x[:, ch, i, j] = torch.multinomial(F.softmax(logits, dim=1), 1).squeeze(1).to(
                    torch.uint8)
            if progress is not None:
                progress(1)
    return x

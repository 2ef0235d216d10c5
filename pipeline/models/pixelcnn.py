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


# Published likelihoods on the CIFAR-10 test split, 8-bit pixels, 256-way softmax (bits per
# dimension); report/references.py shows them beside bpd_test of a run on the same data.
PUBLISHED = (
    {"model": "PixelCNN", "dataset": "cifar10", "metric": "bpd_test", "value": 3.14,
     "source": "van den Oord et al. 2016, Pixel Recurrent Neural Networks, Table 5",
     "url": "arxiv.org/abs/1601.06759", "note": "test NLL, bits/dim",
     "protocol": "exact NLL on the 10,000 CIFAR-10 test images, 8-bit pixels",
     "when": {"train.conditional": False}},
    {"model": "Gated PixelCNN", "dataset": "cifar10", "metric": "bpd_test", "value": 3.03,
     "source": "van den Oord et al. 2016, Conditional Image Generation with PixelCNN Decoders, "
               "Table 1", "url": "arxiv.org/abs/1606.05328", "note": "test NLL, bits/dim",
     "protocol": "exact NLL on the 10,000 CIFAR-10 test images, 8-bit pixels",
     "when": {"train.conditional": False}},
)


PHASES = ("model",)
PROGRESS_KEYS = ("bpd",)
TUNE_SPACE = {"lr": {"loguniform": [1e-4, 3e-3]}}
SWEEP_METRIC, SWEEP_MODE = "val_bpd", "min"
LIKELIHOOD = "exact"
LIKELIHOOD_NOTE = "exact: autoregressive, 256-way softmax per sub-pixel"
GRID_SIZE = 16   # H * W * C sequential sampling steps per grid, even with the cache
TINY = {"channels": 8, "layers": 2, "head_channels": 16}  # tests, --smoke: seconds on 2 cores
DDP_OPTIONS: dict[str, dict] = {}


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
        self.c = c
        self.image_shape = tuple(image_shape)   # what sample() draws
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
def sample(cfg: Config, nets, n: int, labels=None, device="cpu") -> torch.Tensor:
    """Exact ancestral sampling with cached stacks (Ramachandran et al. 2017): every layer's
    vertical stack is computed once per row, the horizontal stack once per pixel over its k//2+1
    wide window, and the head once per pixel; only the masked channel mix runs per channel.
    For the same seed it draws what sample_reference() draws: one torch.multinomial per
    sub-pixel on (n, 256) probabilities, in the same order, so the random streams line up. The
    probabilities agree to float32 rounding (the kernels sum in another order), so only a draw
    within ~1e-7 of a tie could go the other way; none did in the tests or the benchmark."""
    return _CachedSampler(unwrap(nets["model"]), n, labels, device).run()


@torch.no_grad()
def sample_reference(cfg: Config, nets, n: int, labels=None, device="cpu") -> torch.Tensor:
    """Slow reference for sample(): H * W * C full forward passes. Row i depends only on rows
    <= i (convolutions pad at the top and left only), so each pass sees rows 0..i."""
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
    return x


class _CachedSampler:
    """The network of PixelCNN.forward evaluated one pixel at a time, from cached states.

    Logits at (i, j) need (a) every layer's vertical features of row i - 1, which see rows < i
    only, and (b) the horizontal stack at (i, j), which sees columns j - k//2 .. j of the layer
    below in row i, never the pixel (i, j) itself. So once row i - 1 is drawn, one convolution
    per layer over its last k//2 + 1 rows gives the vertical state for all of row i; each pixel
    then costs one small window per layer and the head, and each channel only the masked 1x1
    channel mix. The sums and the order of additions follow forward(), so the probabilities
    agree with the full passes to float32 rounding (about 1e-7)."""

    def __init__(self, model: PixelCNN, n: int, labels, device):
        self.model, self.n, self.device = model, n, device
        self.c, self.h, self.w = model.image_shape
        self.p = p = model.layers[0].k // 2
        # Each layer's vertical input, rows i-1-p .. i-1 with p zero columns on either side: the
        # window forward()'s padded convolution reads for row i - 1 (zero rows above the image).
        self.v_rows = [torch.zeros(n, layer.v_conv.in_channels, p + 1, self.w + 2 * p,
                                   device=device) for layer in model.layers]
        self.v_to_h = [None] * len(model.layers)   # (n, W, 2ch): v_to_h of row i - 1
        # The current row of every layer's horizontal input, channels last, with p zero columns
        # on the left; the extra last entry holds the last layer's output.
        widths = [layer.h_conv.in_channels for layer in model.layers]
        widths.append(model.layers[-1].h_out.out_channels)
        self.h_row = [torch.zeros(n, p + self.w, width, device=device) for width in widths]
        self.cond = [layer.cond(labels) if layer.cond is not None else None
                     for layer in model.layers]
        # Convolution weights as matrices over the channels-last windows of h_row.
        self.h_weight = [layer.h_conv.weight[:, :, 0].permute(0, 2, 1).flatten(1)
                         for layer in model.layers]
        self.h_out_weight = [layer.h_out.weight[:, :, 0, 0] for layer in model.layers]
        self.head = [(conv.weight[:, :, 0, 0], conv.bias) for conv in model.head[1::2]]
        if self.c > 1:
            self.mix = (model.channel_mix.weight * model.channel_mask)[:, :, 0, 0]

    def run(self) -> torch.Tensor:
        n, c, p = self.n, self.c, self.p
        x = torch.zeros(n, c, self.h, self.w, dtype=torch.uint8, device=self.device)
        for i in range(self.h):
            self.vertical_row(x, i)
            for j in range(self.w):
                head = self.horizontal_pixel(j)                              # (n, C * 256)
                pixel = torch.full((n, c), -1.0, device=self.device)  # to_float(0): not drawn
                for ch in range(c):
                    logits = head[:, ch * 256:(ch + 1) * 256]
                    if c > 1:   # channels < ch of this pixel (the mask zeroes the others)
                        logits = logits + F.linear(pixel, self.mix[ch * 256:(ch + 1) * 256])
                    drawn = torch.multinomial(F.softmax(logits, dim=1), 1).squeeze(1)
                    x[:, ch, i, j] = drawn.to(torch.uint8)
                    pixel[:, ch] = to_float(x[:, ch, i, j])
                self.h_row[0][:, p + j] = pixel
        return x

    def vertical_row(self, x: torch.Tensor, i: int) -> None:
        """Every layer's vertical features of row i - 1, and their v_to_h for row i."""
        p, w = self.p, self.w
        if i == 0:   # forward() shifts a zero row in above the image: v_to_h(0) is the bias
            self.v_to_h = [layer.v_to_h.bias.expand(self.n, w, -1) for layer in self.model.layers]
            return
        row = to_float(x[:, :, i - 1])                                       # (n, C, W)
        for l, layer in enumerate(self.model.layers):
            rows = self.v_rows[l]
            rows[:, :, :-1] = rows[:, :, 1:].clone()       # drop the oldest row
            rows[:, :, -1, p:p + w] = row
            v_feat = layer.v_conv(rows)                                      # (n, 2ch, 1, W)
            self.v_to_h[l] = layer.v_to_h(v_feat)[:, :, 0].transpose(1, 2)
            if self.cond[l] is not None:
                v_feat = v_feat + self.cond[l][:, :, None, None]
            row = layer.gate(v_feat)[:, :, 0]                # the next layer's input, row i - 1

    def horizontal_pixel(self, j: int) -> torch.Tensor:
        """Every layer's horizontal stack at column j of the current row, then the head."""
        p = self.p
        for l, layer in enumerate(self.model.layers):
            width = p if layer.first else p + 1      # columns j-p .. j-1, or j-p .. j
            window = self.h_row[l][:, j:j + width].flatten(1)
            h_feat = F.linear(window, self.h_weight[l], layer.h_conv.bias) + self.v_to_h[l][:, j]
            if self.cond[l] is not None:
                h_feat = h_feat + self.cond[l]
            h_new = F.linear(layer.gate(h_feat), self.h_out_weight[l], layer.h_out.bias)
            if not layer.first:   # residual
                h_new = self.h_row[l][:, p + j] + h_new
            self.h_row[l + 1][:, p + j] = h_new
        (w1, b1), (w2, b2) = self.head
        return F.linear(F.relu(F.linear(F.relu(self.h_row[-1][:, p + j]), w1, b1)), w2, b2)

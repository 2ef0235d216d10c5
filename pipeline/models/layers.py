"""Blocks shared by two or more families: a strided conv encoder, its mirror decoder, labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [0, 255] -> float [-1, 1]."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 pixels, rounded to the nearest level."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def label_maps(y: torch.Tensor | None, num_classes: int, h: int, w: int) -> torch.Tensor | None:
    """One-hot labels as constant image planes (B, K, H, W), to concatenate with the input."""
    if not num_classes or y is None:
        return None
    return F.one_hot(y, num_classes).float()[:, :, None, None].expand(-1, -1, h, w)


def with_labels(z: torch.Tensor, y: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """Append a one-hot label to a latent vector (B, D) -> (B, D + K), for conditional decoders."""
    if not num_classes:
        return z
    return torch.cat([z, F.one_hot(y, num_classes).float().to(z.dtype)], dim=1)


def check_image_shape(image_shape: tuple[int, int, int]) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise ValueError(f"image height and width must be multiples of 4, got {h}x{w}; "
                         f"set data.image_size to e.g. 32")


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_dim) with two stride-2 convolutions: H/4 x W/4 at the end."""

    def __init__(self, image_shape, width: int, out_dim: int, num_classes: int = 0,
                 norm: bool = False, slope: float = 0.0):
        super().__init__()
        check_image_shape(image_shape)
        c, h, w = image_shape
        self.num_classes = num_classes
        act = (lambda: nn.LeakyReLU(slope)) if slope else nn.ReLU
        self.convs = nn.Sequential(
            nn.Conv2d(c + num_classes, width, 4, 2, 1), act(),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=not norm),
            nn.BatchNorm2d(2 * width) if norm else nn.Identity(), act(),
        )
        self.head = nn.Linear(2 * width * (h // 4) * (w // 4), out_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        maps = label_maps(y, self.num_classes, x.shape[2], x.shape[3])
        if maps is not None:
            x = torch.cat([x, maps.to(x.dtype)], dim=1)
        return self.head(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
    """(B, in_dim) -> (B, out_channels, H, W): a linear map to H/4 x W/4, two transposed convs."""

    def __init__(self, image_shape, width: int, in_dim: int, out_channels: int,
                 norm: bool = False):
        super().__init__()
        check_image_shape(image_shape)
        _, h, w = image_shape
        self.start = (2 * width, h // 4, w // 4)
        self.fc = nn.Sequential(nn.Linear(in_dim, 2 * width * (h // 4) * (w // 4), bias=not norm),
                                nn.BatchNorm1d(2 * width * (h // 4) * (w // 4)) if norm
                                else nn.Identity(), nn.ReLU())
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=not norm),
            nn.BatchNorm2d(width) if norm else nn.Identity(), nn.ReLU(),
            nn.ConvTranspose2d(width, out_channels, 4, 2, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconvs(self.fc(z).view(-1, *self.start))


def unwrap(module: nn.Module) -> nn.Module:
    """The bare module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)

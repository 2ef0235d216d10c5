"""Out-of-distribution image sets, all uint8 (N, C, H, W) in the in-distribution image shape.

    unseen     the test images of the classes a run was trained without (data.exclude_classes):
               the cleanest "monkey" for a model of the other classes
    digits     scikit-learn's 8x8 handwritten digits (bundled, offline), 0..16 scaled to 0..255
               and upsampled bilinearly to the image size
    mnist      MNIST's test split where its IDX files are on disk (data.root, GENBENCH_DATA or
               ./data, torchvision's layout included); never downloaded here
    noise      uniform noise, every sub-pixel independent in 0..255
    constant   one random value per image and channel
    flipped    the in-distribution test images upside down (vertical flip)
    inverted   the in-distribution test images with intensities inverted (255 - x)

A set that cannot be built (no excluded class, MNIST not on disk, scikit-learn missing, the
in-distribution data being MNIST itself) is skipped with a sentence saying why.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.data import ImageData, default_root, find_idx_dataset

SETS = ("unseen", "digits", "mnist", "noise", "constant", "flipped", "inverted")
SYNTHETIC = ("noise", "constant", "flipped", "inverted")
DESCRIPTIONS = {
    "unseen": "test images of the class(es) left out of training (data.exclude_classes)",
    "digits": "scikit-learn's 8x8 digits, 0..16 scaled to 0..255, bilinear upsampling",
    "mnist": "MNIST test images (from disk), resized bilinearly where needed",
    "noise": "uniform noise, each sub-pixel independent in 0..255",
    "constant": "constant images, one uniform random value per image and channel",
    "flipped": "in-distribution test images flipped vertically",
    "inverted": "in-distribution test images with inverted intensities (255 - x)",
}


class Unavailable(Exception):
    """A set that cannot be built here; the message says why."""


@dataclass(frozen=True)
class OODSet:
    name: str
    images: torch.Tensor  # uint8 (N, C, H, W)

    def __len__(self) -> int:
        return self.images.shape[0]


def subset(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n of the images: all of them, in order, when n covers them; else a seeded subset."""
    if n >= len(images):
        return images
    gen = torch.Generator().manual_seed(seed)
    return images[torch.randperm(len(images), generator=gen)[:n].sort().values]


def fit_shape(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (N, c, h, w) -> uint8 (N, C, H, W): bilinear resizing, grey repeated to colour,
    colour averaged to grey."""
    c, h, w = shape
    x = images.float()
    if x.shape[2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                          antialias=x.shape[2] > h)
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True).expand(-1, c, -1, -1)
    return x.round().clamp(0, 255).to(torch.uint8).contiguous()


def uniform_noise(n: int, shape, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)


def constant_images(n: int, shape, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 256, (n, shape[0], 1, 1), generator=gen, dtype=torch.uint8)
    return values.expand(-1, -1, *shape[1:]).contiguous()


def sklearn_digits(shape) -> torch.Tensor:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise Unavailable("scikit-learn is not installed (`pip install scikit-learn`)") from None
    raw = torch.as_tensor(load_digits().images, dtype=torch.float32)  # (1797, 8, 8) in 0..16
    images = (raw * (255 / 16)).round().to(torch.uint8).unsqueeze(1)
    return fit_shape(images, shape)


def mnist_test(shape, roots: list[Path]) -> torch.Tensor:
    found = find_idx_dataset("mnist", roots, train=False)
    if found is None:
        where = ", ".join(str(r) for r in roots)
        raise Unavailable(f"MNIST is not on disk (looked in {where}); put its t10k IDX files "
                          f"there or pass data.root")
    return fit_shape(found.images, shape)


def mnist_roots(data_root: str | None) -> list[Path]:
    roots = [Path(data_root).absolute()] if data_root else []
    return roots + [default_root()]


def build_sets(in_dist: ImageData, unseen: ImageData | None, names, n: int, seed: int,
               dataset: str, data_root: str | None) -> tuple[dict[str, OODSet], dict[str, str]]:
    """The requested OOD sets (at most n images each) and, for each skipped one, why.

    in_dist: the in-distribution test images the transformed sets are made from; unseen: the
    test images of the excluded classes (None when the run excluded none)."""
    shape = in_dist.image_shape
    sets: dict[str, OODSet] = {}
    skipped: dict[str, str] = {}
    for i, name in enumerate(names):
        s = seed * 1009 + i  # each set its own stream
        try:
            if name == "unseen":
                if unseen is None or len(unseen) == 0:
                    raise Unavailable("the run excluded no class (train with "
                                      "data.exclude_classes=[k])")
                images = subset(unseen.images, n, s)
            elif name == "digits":
                images = subset(sklearn_digits(shape), n, s)
            elif name == "mnist":
                if dataset == "mnist":
                    raise Unavailable("MNIST is the in-distribution dataset")
                images = subset(mnist_test(shape, mnist_roots(data_root)), n, s)
            elif name == "noise":
                images = uniform_noise(n, shape, s)
            elif name == "constant":
                images = constant_images(n, shape, s)
            elif name == "flipped":
                images = subset(in_dist.images, n, s).flip(2)
            elif name == "inverted":
                images = 255 - subset(in_dist.images, n, s)
            else:
                raise ValueError(f"unknown OOD set {name!r}; use {', '.join(SETS)}")
        except Unavailable as why:
            skipped[name] = str(why)
            continue
        sets[name] = OODSet(name, images.contiguous())
    return sets, skipped

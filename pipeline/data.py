"""Datasets as uint8 tensors in memory, split and sharded. No Ray, no MLflow here.

Every dataset becomes an `ImageData`: images (N, C, H, W) uint8 and labels (N,) int64.
The train split is cut into train/validation by a fixed seed; the test split is kept for eval.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import ConfigError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
BUILTIN = ("fashion-mnist", "mnist", "cifar10")
SPLITS = ("train", "val", "test")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class ImageData:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    num_classes: int

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def class_frequencies(self) -> torch.Tensor:
        counts = torch.bincount(self.labels, minlength=self.num_classes).double()
        return counts / counts.sum()


def _read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ConfigError(f"{path} is not a uint8 IDX file; re-download the dataset")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8)
    return data.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        for folder in (root, root / "raw", root / "FashionMNIST" / "raw", root / "MNIST" / "raw"):
            if (folder / name).is_file():
                return folder / name
    return None


def _load_idx_dataset(name: str, root: Path | None, train: bool) -> ImageData | None:
    prefix = "train" if train else "t10k"
    roots = [root] if root else []
    if name == "fashion-mnist":
        roots.append(DEBIAN_FASHION_MNIST)
    for r in roots:
        images_path = _find_idx(r, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(r, f"{prefix}-labels-idx1-ubyte")
        if images_path and labels_path:
            images = _read_idx(images_path).unsqueeze(1)  # (N, 1, 28, 28)
            labels = _read_idx(labels_path).long()
            return ImageData(images.contiguous(), labels, 10)
    return None


def find_idx_dataset(name: str, roots: list[Path], train: bool) -> ImageData | None:
    """An MNIST-format dataset from the first root that holds its IDX files; never downloads."""
    for root in roots:
        found = _load_idx_dataset(name, root, train)
        if found is not None:
            return found
    return None


def _torchvision_dataset(name: str, root: Path, train: bool) -> ImageData:
    import torchvision

    cls = {"fashion-mnist": torchvision.datasets.FashionMNIST,
           "mnist": torchvision.datasets.MNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        ds = cls(str(root), train=train, download=True)
    except Exception as exc:  # offline: urllib errors, incomplete archives
        where = {"cifar10": f"{root}/cifar-10-batches-py/ (the python version of CIFAR-10)",
                 }.get(name, f"{root}/ (the four IDX files, optionally .gz)")
        hint = " or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
        raise ConfigError(f"dataset {name!r} is not on disk and could not be downloaded "
                          f"({type(exc).__name__}); put it in {where}{hint}, "
                          f"or pass --set data.root=DIR") from None
    data = torch.as_tensor(ds.data)
    images = data.permute(0, 3, 1, 2) if data.ndim == 4 else data.unsqueeze(1)
    labels = torch.as_tensor(ds.targets).long()
    return ImageData(images.contiguous(), labels, len(ds.classes))


def _image_folder(path: Path, image_size: int) -> ImageData:
    import torchvision
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.Resize(image_size), v2.CenterCrop(image_size)])
    ds = torchvision.datasets.ImageFolder(str(path), transform=transform)
    if len(ds) == 0:
        raise ConfigError(f"no images found under {path}; it needs one sub-folder per class")
    images = torch.stack([ds[i][0][:3] if ds[i][0].shape[0] >= 3 else ds[i][0].expand(3, -1, -1)
                          for i in range(len(ds))])
    labels = torch.as_tensor(ds.targets).long()
    return ImageData(images.contiguous(), labels, len(ds.classes))


def default_root() -> Path:
    return Path(os.environ.get("GENBENCH_DATA", "data")).absolute()


def check_dataset_name(name: str) -> None:
    if name not in BUILTIN and not Path(name).is_dir():
        raise ConfigError(f"unknown dataset {name!r}; use one of {', '.join(BUILTIN)} "
                          f"or a path to an ImageFolder directory")


def load_raw(name: str, train: bool, root: str | None = None, image_size: int = 32) -> ImageData:
    """The dataset's own train (train=True) or test split."""
    check_dataset_name(name)
    if name not in BUILTIN:  # ImageFolder: DIR/train and DIR/test, or DIR itself as train
        folder = Path(name)
        if (folder / "train").is_dir():
            folder = folder / ("train" if train else "test")
        elif not train:
            folder = folder / "test"
        if not folder.is_dir():
            raise ConfigError(f"ImageFolder {name} has no {folder.name}/ split; give it "
                              f"train/ and test/ sub-folders, one folder per class in each")
        return _image_folder(folder, image_size)
    root_path = Path(root).absolute() if root else None
    if name in ("fashion-mnist", "mnist"):
        found = _load_idx_dataset(name, root_path, train)
        if found is not None:
            return found
    return _torchvision_dataset(name, root_path or default_root(), train)


def load_split(name: str, split: str, root: str | None = None, val_fraction: float = 0.1,
               split_seed: int = 0, image_size: int = 32) -> ImageData:
    """train / val (a fixed, seeded cut of the training set) / test (kept for evaluation)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if split == "test":
        return load_raw(name, train=False, root=root, image_size=image_size)
    full = load_raw(name, train=True, root=root, image_size=image_size)
    n_val = int(round(len(full) * val_fraction))
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(split_seed))
    idx = (order[:n_val] if split == "val" else order[n_val:]).sort().values
    return ImageData(full.images[idx].contiguous(), full.labels[idx], full.num_classes)


def without_classes(data: ImageData, classes) -> ImageData:
    """data less the images of the given classes (labels and num_classes unchanged)."""
    if not classes:
        return data
    keep = ~torch.isin(data.labels, torch.as_tensor(list(classes), dtype=torch.long))
    return ImageData(data.images[keep].contiguous(), data.labels[keep], data.num_classes)


def only_classes(data: ImageData, classes) -> ImageData:
    """The images of the given classes."""
    keep = torch.isin(data.labels, torch.as_tensor(list(classes), dtype=torch.long))
    return ImageData(data.images[keep].contiguous(), data.labels[keep], data.num_classes)


def check_excluded(classes, num_classes: int, dataset: str) -> None:
    bad = [k for k in classes if not 0 <= k < num_classes]
    if bad:
        raise ConfigError(f"data.exclude_classes {list(bad)} outside the {num_classes} classes "
                          f"of {dataset} (0..{num_classes - 1})")
    if len(set(classes)) >= num_classes:
        raise ConfigError(f"data.exclude_classes leaves no class of {dataset} to train on")


def load_config_split(d, split: str) -> ImageData:
    """A split as a run's data config (a DataConfig) defines it: train and val never hold the
    excluded classes (data.exclude_classes), and test is the in-distribution test split, also
    without them (eval scores those separately, as out-of-distribution)."""
    data = load_split(d.dataset, split, d.root, d.val_fraction, d.split_seed, d.image_size)
    excluded = tuple(getattr(d, "exclude_classes", ()) or ())
    if excluded:
        check_excluded(excluded, data.num_classes, d.dataset)
    return without_classes(data, excluded)


class ShardedBatches:
    """Per-rank batches: each epoch is one seeded permutation shared by all ranks; rank r takes
    every world-th index, so the ranks' shards are disjoint and together cover the epoch."""

    def __init__(self, data: ImageData, global_batch: int, rank: int, world: int, seed: int):
        if global_batch % world:
            raise ConfigError(f"batch size {global_batch} does not divide across {world} workers")
        self.data, self.rank, self.world, self.seed = data, rank, world, seed
        self.global_batch, self.local_batch = global_batch, global_batch // world
        self.steps_per_epoch = len(data) // global_batch
        self._epoch, self._order = -1, None
        if self.steps_per_epoch == 0:
            raise ConfigError(f"batch size {global_batch} is larger than the dataset "
                              f"({len(data)} images); lower train.batch_size")

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch for a global step: deterministic, so a resumed run sees the same data."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._epoch != epoch:
            gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.data), generator=gen)
        order = self._order
        start = i * self.global_batch
        idx = order[start:start + self.global_batch][self.rank::self.world]
        return self.data.images[idx], self.data.labels[idx]

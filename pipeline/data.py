"""Datasets as uint8 tensors in memory, split and sharded. No Ray, no MLflow here.

Every dataset becomes an `ImageData`: images (N, C, H, W) uint8 and labels (N,) int64.
The train split is cut into train/validation by a fixed seed; the test split is kept for eval.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import threading
import zlib
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


# A file's decompressed bytes, by (path, size, mtime): a process reads each file once. A bench's
# driver and its warm training slots load the same split for every run; gunzipping the 47 MB
# of Fashion-MNIST's training images took ~1.2 s each time. Tensors are built anew from them.
# A lock: a bench's evaluations load data on threads of one process, and two of them would
# otherwise gunzip the same file at once or evict the same entry twice.
_BYTES: dict[tuple, bytes] = {}
_BYTES_KEPT = 4
_BYTES_LOCK = threading.Lock()


def _file_bytes(path: Path) -> bytes:
    st = path.stat()
    key = (str(path.absolute()), st.st_size, st.st_mtime_ns)
    with _BYTES_LOCK:
        if key not in _BYTES:
            with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
                raw = f.read()
            while len(_BYTES) >= _BYTES_KEPT:
                _BYTES.pop(next(iter(_BYTES)))
            _BYTES[key] = raw
        return _BYTES[key]


def _read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST. A truncated
    or corrupt file is a one-line error that names it."""
    def corrupt(why: str) -> ConfigError:
        return ConfigError(f"{path} is truncated or corrupt ({why}); delete it and download "
                           f"the dataset again")

    try:
        raw = _file_bytes(path)
    except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise corrupt(str(exc) or type(exc).__name__) from None
    if len(raw) < 4:
        raise corrupt(f"{len(raw)} bytes")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4 or len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"{path} is not a uint8 IDX file; delete it and download the "
                          f"dataset again")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    expected = math.prod(shape)
    if len(raw) - 4 - 4 * ndim != expected:
        raise corrupt(f"{len(raw) - 4 - 4 * ndim} bytes of pixels, the header says {expected}")
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
        if bool(images_path) != bool(labels_path):  # half a dataset: never fall back silently
            have, lack = (("images", "labels") if images_path else ("labels", "images"))
            raise ConfigError(f"{r} has the {prefix} {have} ({(images_path or labels_path).name}) "
                              f"but not its {lack} ({prefix}-{lack}-idx"
                              f"{3 if lack == 'images' else 1}-ubyte[.gz]); add that file")
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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
GREY_MODES = {"1": "L", "L": "L", "LA": "L"}                      # PIL mode -> what it loads as
COLOUR_MODES = {m: "RGB" for m in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB",
                                   "HSV")}
SPLIT_DIRS = ("train", "test")


def _class_folders(path: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and p.name not in exclude
                  and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def _idx_hint(path: Path) -> str | None:
    """A folder of MNIST-format IDX files passed where an ImageFolder was expected."""
    names = [p.name for depth in ("", "*/", "*/*/") for p in path.glob(f"{depth}*idx[0-9]-ubyte*")]
    if not names:
        return None
    guess = "fashion-mnist" if "fashion" in str(path).lower() else "mnist"
    return (f"{path} holds IDX files ({names[0]}), not an ImageFolder; pass --dataset {guess} "
            f"(or mnist / fashion-mnist) --set data.root={path}")


def _folder_classes(path: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """The class sub-folders of an ImageFolder split, or a one-line error saying what it holds."""
    classes = [c for c in _class_folders(path, exclude) if image_files(c)]
    if not classes:
        raise ConfigError(_idx_hint(path) or f"no images found under {path}; an ImageFolder dataset needs one "
                          f"sub-folder of images per class (e.g. {path}/cats/1.png), optionally "
                          f"inside train/ and test/")
    return classes


def load_image(file: Path):
    """A PIL image in 'L' (grey) or 'RGB', keeping grey images grey (torchvision's default loader
    converts everything to RGB: 3 identical channels that a likelihood model gets for free)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb guard (None: switched off)
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; the size is checked below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(file)
        width, height = img.size  # from the header: nothing decoded yet
        if limit is None or width * height <= limit:
            img.load()
    except Image.DecompressionBombError:  # over twice the limit: open itself refuses
        raise ConfigError(f"image {file} declares more than {2 * limit} pixels "
                          f"(PIL.Image.MAX_IMAGE_PIXELS is {limit}, the guard against "
                          f"decompression bombs); remove it or save it smaller") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ConfigError(f"cannot read image {file} ({type(exc).__name__}); remove or "
                          f"re-save it") from None
    if limit is not None and width * height > limit:
        raise ConfigError(f"image {file} is {width}x{height} pixels, more than {limit} "
                          f"(PIL.Image.MAX_IMAGE_PIXELS, the guard against decompression "
                          f"bombs); remove it or save it smaller")
    mode = GREY_MODES.get(img.mode) or COLOUR_MODES.get(img.mode)
    if mode is None:
        raise ConfigError(f"image {file} has PIL mode {img.mode!r} (16-bit or float pixels); "
                          f"save the dataset as 8-bit grey or RGB images")
    return img.convert(mode)


MODE_OF_CHANNELS = {1: "L", 3: "RGB"}
MODE_WORDS = {"L": "grey", "RGB": "colour (RGB)"}


def read_images(folder: Path, files: list[Path], image_shape: tuple[int, int, int], *,
                prefix: str = "", theirs: str = "the reference images",
                save: str = "the samples") -> tuple[torch.Tensor, str]:
    """uint8 (N, C, H, W) of `files` (under folder), in order, and a sha256 over their relative
    paths and bytes. An image of another mode or size than image_shape is a one-line error,
    "{prefix}{file} is ... but {theirs} are ...; save {save} ...": never resized, since that
    would change what is measured (eval --samples folders, --ood-sets folders)."""
    import hashlib

    c, h, w = image_shape
    mode = MODE_OF_CHANNELS[c]
    digest, images = hashlib.sha256(), []
    for file in files:
        img = load_image(file)  # decompression bombs and unreadable files: one line
        if img.mode != mode:
            raise ConfigError(f"{prefix}{file} is {MODE_WORDS[img.mode]} but {theirs} are "
                              f"{MODE_WORDS[mode]} {w}x{h}; save {save} as {MODE_WORDS[mode]} "
                              f"images")
        if img.size != (w, h):
            raise ConfigError(f"{prefix}{file} is {img.size[0]}x{img.size[1]} but {theirs} are "
                              f"{w}x{h}; save {save} at {w}x{h} (never resized: that would "
                              f"change what is measured)")
        digest.update(file.relative_to(folder).as_posix().encode())
        digest.update(file.read_bytes())
        pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        images.append(pixels.view(h, w, c).permute(2, 0, 1))
    return torch.stack(images).contiguous(), digest.hexdigest()


def _image_folder(folders: list[Path], image_size: int) -> ImageData:
    """Images under <class folder>/..., resized (shorter side) and centre-cropped to image_size,
    as uint8 (N, 1, H, W) when every image is grey and (N, 3, H, W) when every one is colour;
    label i is folders[i]."""
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.Resize(image_size), v2.CenterCrop(image_size)])
    images, labels, first_of_mode = [], [], {}
    for label, folder in enumerate(folders):
        for file in image_files(folder):
            img = load_image(file)
            first_of_mode.setdefault(img.mode, file)
            if len(first_of_mode) > 1:
                raise ConfigError(f"{folder.parent} mixes grey and colour images (e.g. "
                                  f"{first_of_mode['L']} is grey, {first_of_mode['RGB']} is "
                                  f"colour); convert them all to one mode")
            images.append(transform(img))
            labels.append(label)
    return ImageData(torch.stack(images).contiguous(), torch.tensor(labels, dtype=torch.long),
                     len(folders))


def default_root() -> Path:
    return Path(os.environ.get("GENBENCH_DATA", "data")).absolute()


def check_dataset_name(name: str) -> None:
    if name not in BUILTIN and not Path(name).is_dir():
        raise ConfigError(f"unknown dataset {name!r}; use one of {', '.join(BUILTIN)} "
                          f"or a path to an ImageFolder directory")


def load_raw(name: str, train: bool, root: str | None = None, image_size: int = 32) -> ImageData:
    """The dataset's own train (train=True) or test split."""
    check_dataset_name(name)
    if name not in BUILTIN:
        return _image_folder_split(Path(name), train, image_size)
    root_path = Path(root).absolute() if root else None
    if name in ("fashion-mnist", "mnist"):
        found = _load_idx_dataset(name, root_path, train)
        if found is not None:
            return found
    return _torchvision_dataset(name, root_path or default_root(), train)


def _image_folder_split(root: Path, train: bool, image_size: int) -> ImageData:
    """ImageFolder: root/train/<class>/ and root/test/<class>/, or root/<class>/ as the train split
    beside root/test/<class>/. In the second layout test/ is never read as a class of the train
    split (that would train on every test image), and test labels follow the train split's class
    names, so label k is the same class in both splits."""
    nested = (root / "train").is_dir()
    train_classes = _folder_classes(root / "train" if nested else root,
                                    () if nested else SPLIT_DIRS)
    if train:
        return _image_folder(train_classes, image_size)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise ConfigError(f"ImageFolder {root} has no test/ split; give it train/ and test/ "
                          f"sub-folders (or class folders beside test/), one folder per class")
    test_classes = _folder_classes(test_dir)
    names, expected = [c.name for c in test_classes], [c.name for c in train_classes]
    if names != expected:
        extra, lacking = sorted(set(names) - set(expected)), sorted(set(expected) - set(names))
        what = "; ".join(part for part in (f"extra: {', '.join(extra)}" if extra else "",
                                           f"missing: {', '.join(lacking)}" if lacking else "")
                         if part)
        raise ConfigError(f"the class folders of {test_dir} differ from the train split's "
                          f"({what}); give both splits the same class folders")
    test = _image_folder(test_classes, image_size)
    train_mode = load_image(image_files(train_classes[0])[0]).mode
    if test.image_shape[0] != (1 if train_mode == "L" else 3):
        raise ConfigError(f"{test_dir} and the train split differ in colour mode (one grey, one "
                          f"colour); convert both to one mode")
    return test


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

"""A user's own OOD set: `--ood-sets mnist,path/to/my-set` (any entry that is not a built-in set
name is a folder of PNG/JPEG images).

The images are checked like `eval --samples` folders (eval/external.py): every one must decode
within PIL's decompression-bomb guard and have the in-distribution images' size and mode (e.g.
28x28 grey for Fashion-MNIST); they are never resized or converted, since either would change
what is being rejected. The set is named in metric keys and tags by the folder's name (made safe
for ood_<metric>_<set>_<score> keys: '_' and other symbols become '-'); its stamp holds the
folder and a sha256 over its files' relative paths and bytes.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from pipeline.data import image_files, read_images
from pipeline.errors import ConfigError

MAX_IMAGES = 100_000  # all are decoded and held in memory: a bigger folder is a mistake
RESERVED = ("in",)  # eval/ood/__init__.py's name for the in-distribution group


def set_name(folder: Path) -> str:
    """The folder's name as an OOD set name: letters, digits, '.' and '-' only ('_' splits
    metric keys)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", folder.name).strip("-.") or "folder"


def check_folders(entries, builtin) -> dict[str, Path]:
    """{set name: folder} for the entries that are not built-in names; a one-line ConfigError
    for an entry that is neither, an empty folder or a name that two sets would share."""
    folders: dict[str, Path] = {}
    for entry in entries:
        if entry in builtin:
            continue
        folder = Path(entry).expanduser().absolute()
        if not folder.is_dir():
            raise ConfigError(f"unknown OOD set(s) {entry}: neither a built-in set "
                              f"({','.join(builtin)}) nor a folder of images")
        if not image_files(folder):
            raise ConfigError(f"--ood-sets folder {folder} holds no PNG/JPEG images; put the "
                              f"OOD images there as image files")
        name = set_name(folder)
        if name in builtin or name in RESERVED or name in folders:
            raise ConfigError(f"--ood-sets folder {folder} would be named {name!r}, which "
                              f"{'another set already has' if name in folders else 'is reserved'}"
                              f"; rename the folder")
        folders[name] = folder
    return folders


def load_folder(folder: Path, image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, str]:
    """uint8 (N, C, H, W) of every image under folder, in file-name order, and a sha256 over
    their relative paths and bytes; a one-line ConfigError for an image of another size or mode
    than image_shape, one PIL cannot read, or a decompression bomb."""
    files = image_files(folder)
    if not files:
        raise ConfigError(f"--ood-sets folder {folder} holds no PNG/JPEG images; put the OOD "
                          f"images there as image files")
    if len(files) > MAX_IMAGES:
        raise ConfigError(f"--ood-sets folder {folder} holds {len(files)} images, more than "
                          f"{MAX_IMAGES}; copy a subset into another folder")
    return read_images(folder, files, image_shape, prefix="OOD image ",
                       theirs="the model's images", save="the set")

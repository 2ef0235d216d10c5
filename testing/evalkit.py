"""Helpers shared by the eval tests: tiny models, their checkpoints, a test domain classifier."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pipeline import checkpoint as ckpt
from pipeline.config import Config
from pipeline.data import ImageData, load_split
from pipeline.loop import build_nets
from pipeline.models import FAMILIES


def tiny_size(family: str) -> dict:
    """The family's own tiny size, TINY in its module (small enough that training steps,
    sampling, bits/dim and the probe take seconds on 2 CPU cores), or {}: its defaults. The
    suite's --set sizes (tests/conftest.py) and the benchmarks' --smoke read the same."""
    return dict(getattr(FAMILIES[family], "TINY", {}))


TINY = {family: tiny_size(family) for family in FAMILIES}

# The test domain classifier: a short run of the real architecture, trained once per session.
# Many passes over few images make it confident, which is what IS measures.
TEST_CLASSIFIER = {"epochs": 4, "max_images": 3000, "width": 16}


def tiny_config(family: str, **train) -> Config:
    return Config.from_dict({"model": family, family: tiny_size(family), "train": train})


def fmnist_test() -> ImageData:
    return load_split("fashion-mnist", "test", None, 0.1, 0, 32)


def tiny_model(family: str, seed: int = 0, **train):
    cfg = tiny_config(family, seed=seed, **train)
    nets, opts = build_nets(cfg, fmnist_test(), torch.device("cpu"), 1)
    return cfg, nets, opts


def save_checkpoint(directory: Path, cfg: Config, nets, opts, step: int = 5,
                    run_id: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return ckpt.save(directory, nets, opts, step, cfg.to_dict(), run_id)


def domain_cache(base: Path) -> Path:
    """A GENBENCH_CACHE holding a test domain classifier for Fashion-MNIST (trained if absent;
    the path is per session, so every test module reuses it). Under pytest-xdist `base` (the
    worker's basetemp, .../pytest-N/popen-gwK) is one folder per worker: the cache then lives
    one level up, shared by the workers, and a file lock makes the first one train it while
    the others wait for it."""
    from filelock import FileLock

    from eval.domain_classifier import cached_domain, train_and_cache_domain

    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    cache = root / "genbench-cache"
    old = os.environ.get("GENBENCH_CACHE")
    os.environ["GENBENCH_CACHE"] = str(cache)
    try:
        with FileLock(str(root / "genbench-cache.lock")):
            if cached_domain("fashion-mnist", 32) is None:
                train_and_cache_domain("fashion-mnist", quiet=True, **TEST_CLASSIFIER)
    finally:
        if old is None:
            del os.environ["GENBENCH_CACHE"]
        else:
            os.environ["GENBENCH_CACHE"] = old
    return cache


def image_folder(root, size=16, per_class=6):
    """A tiny ImageFolder dataset (train/ and test/, two classes of PNGs) the test makes."""
    from PIL import Image

    gen = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(("dark", "light")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = gen.integers(0, 128, (size, size, 3)) + 127 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return str(root)


def decompression_bomb(path: Path, side: int = 20_000) -> Path:
    """A valid greyscale PNG of side x side black pixels (400 MB decoded at 20,000 px) in about
    400 KB: written row by row through zlib, since making it with PIL would allocate it all."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the row's pixels
    idat = b"".join([packer.compress(row) for _ in range(side)] + [packer.flush()])
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path

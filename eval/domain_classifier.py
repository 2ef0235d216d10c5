"""The `domain` feature extractor's network: a small CNN that genbench trains on a dataset's
train split (offline, cheap) and caches under GENBENCH_CACHE with its sha256 and test accuracy.
eval/extractors.py hands it to torch-fidelity; eval/ood/baseline.py also uses it as a classifier.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data import BUILTIN, ImageData, load_raw
from pipeline.errors import ConfigError

DOMAIN_ARCH_VERSION = 2  # bump when DomainClassifier changes: old caches are then ignored
DOMAIN_EPOCHS = 5


def cache_dir() -> Path:
    """GENBENCH_CACHE, else ~/.cache/genbench."""
    return Path(os.environ.get("GENBENCH_CACHE", Path.home() / ".cache" / "genbench"))


_held = threading.local()  # the cache locks this thread holds: re-entering one is a no-op


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (e.g. a cache file) across processes: flock on path.lock,
    a file in the same folder. Two evals on a fresh cache then build an entry once: the second
    waits for the first and reuses what it wrote. Re-entrant within a thread."""
    lock_path = path.with_name(path.name + ".lock")
    held = _held.__dict__.setdefault("paths", set())
    if lock_path in held:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when f closes, or when the process dies
        held.add(lock_path)
        try:
            yield
        finally:
            held.discard(lock_path)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) into a temp file of a unique name beside path, then rename it to path: a
    reader sees the old file or the new one, never a part, and two writers never share a temp
    file (a fixed name made one's rename fail with FileNotFoundError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1 or 3, H, W) -> uint8 (N, 3, H, W): grey is repeated, as torch-fidelity wants."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class DomainClassifier(nn.Module):
    """uint8 (B, 3, H, W) -> (penultimate features (B, 128), logits (B, K)).

    Three conv blocks (width, 2 width, 4 width channels) and adaptive pooling to 4x4, so any
    image size works. A grey dataset is classified on one channel (the mean of the three
    repeated ones): the same result at a third of the first layer's cost.
    """

    FEATURES = 128

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16):
        super().__init__()

        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        self.in_channels = in_channels
        self.body = nn.Sequential(*block(in_channels, width), nn.MaxPool2d(2),
                                  *block(width, 2 * width), nn.MaxPool2d(2),
                                  *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(4),
                                  nn.Flatten(), nn.Linear(4 * width * 16, self.FEATURES),
                                  nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.FEATURES, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float() / 127.5 - 1.0
        if self.in_channels == 1:
            x = x.mean(1, keepdim=True)
        features = self.body(x)
        return features, self.head(self.dropout(features))


def dataset_key(dataset: str, image_size: int) -> str:
    """A file-name-safe id of a dataset: builtin names as they are, folders by path hash."""
    if dataset in BUILTIN:
        return dataset
    digest = hashlib.sha256(str(Path(dataset).absolute()).encode()).hexdigest()[:12]
    return f"folder-{Path(dataset).name[:32]}-{digest}-{image_size}px"


def domain_variant(epochs: float | None) -> str:
    """The cache slot of a classifier trained for `epochs`: "" (the default slot) for None or
    DOMAIN_EPOCHS, else e.g. "e1" (a cheaper one, e.g. the quick bench's, kept apart so that it
    never stands in for the default)."""
    return "" if epochs is None or epochs == DOMAIN_EPOCHS else f"e{epochs:g}"


def domain_paths(dataset: str, image_size: int, variant: str = "") -> tuple[Path, Path]:
    stem = f"{dataset_key(dataset, image_size)}-v{DOMAIN_ARCH_VERSION}"
    stem += f"-{variant}" if variant else ""
    folder = cache_dir() / "domain"
    return folder / f"{stem}.pt", folder / f"{stem}.json"


@torch.no_grad()
def accuracy(net: DomainClassifier, data: ImageData, batch_size: int = 1000,
             device="cpu") -> float:
    net.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        x = to_rgb_uint8(data.images[start:start + batch_size]).to(device)
        correct += (net(x)[1].argmax(1).cpu() == data.labels[start:start + batch_size]).sum().item()
    return correct / len(data)


def train_domain_classifier(train: ImageData, test: ImageData, epochs: float = DOMAIN_EPOCHS,
                            width: int = 16, batch_size: int = 128, lr: float = 4e-3,
                            seed: int = 0, device="cpu", quiet: bool = False,
                            hflip: bool = True):
    """Adam with a one-cycle schedule (and horizontal flips where they keep the class: not for
    digits); returns (net, test accuracy)."""
    from eval.progress import bar

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DomainClassifier(train.num_classes, train.image_shape[0], width).to(device)
    steps_per_epoch = max(1, len(train) // batch_size)
    steps = max(1, math.ceil(epochs * steps_per_epoch))
    opt = torch.optim.Adam(net.parameters(), lr=lr / 2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    net.train()
    with bar(steps, "training the domain classifier", "step", quiet) as progress:
        for step in range(steps):
            i = step % steps_per_epoch
            if i == 0:
                order = torch.randperm(len(train), generator=gen)
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = to_rgb_uint8(train.images[idx])
            if hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x = x.to(device)
            loss = F.cross_entropy(net(x)[1], train.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            progress.update(1)
    return net, accuracy(net, test, device=device)


def save_domain_classifier(net: DomainClassifier, meta: dict, pt_path: Path,
                           json_path: Path) -> dict:
    """Write weights, then the sidecar with their sha256 and test accuracy (atomic renames,
    under the slot's lock: another process never pairs one writer's weights with another's
    sidecar)."""
    payload = {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
               "num_classes": net.head.out_features, "in_channels": net.in_channels,
               "width": net.body[0].out_channels,
               "arch_version": DOMAIN_ARCH_VERSION}
    with cache_lock(pt_path):
        atomic_write(pt_path, lambda tmp: torch.save(payload, tmp))
        meta = {**meta, "sha256": sha256_file(pt_path), "file": pt_path.name}
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return meta


def train_and_cache_domain(dataset: str, root: str | None = None, image_size: int = 32,
                           epochs: float = DOMAIN_EPOCHS, max_images: int | None = None,
                           width: int = 16, seed: int = 0, force: bool = False, device="cpu",
                           quiet: bool = False, variant: str = "") -> dict:
    """Train the domain classifier of a dataset on its train split and cache it (in the slot
    `variant`, see domain_variant); returns its metadata (sha256, test_accuracy, ...). An
    existing cache is replaced only with force. Holds the slot's lock throughout: a second
    process that wants the same slot waits, then finds it cached (see ensure_domain)."""
    pt_path, json_path = domain_paths(dataset, image_size, variant)
    with cache_lock(pt_path):
        if pt_path.exists() and not force:
            raise ConfigError(f"a domain classifier for {dataset} is already cached at "
                              f"{pt_path}; pass --force to replace it")
        return _train_and_save(dataset, root, image_size, epochs, max_images, width, seed,
                               device, quiet, pt_path, json_path)


def _train_and_save(dataset, root, image_size, epochs, max_images, width, seed, device, quiet,
                    pt_path: Path, json_path: Path) -> dict:
    train = load_raw(dataset, train=True, root=root, image_size=image_size)
    test = load_raw(dataset, train=False, root=root, image_size=image_size)
    if max_images is not None and max_images < len(train):
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:max_images]
        train = ImageData(train.images[idx], train.labels[idx], train.num_classes)
    t0 = time.time()
    net, acc = train_domain_classifier(train, test, epochs, width, seed=seed, device=device,
                                       quiet=quiet, hflip=dataset != "mnist")
    meta = {"dataset": dataset, "image_shape": list(train.image_shape),
            "num_classes": train.num_classes, "test_accuracy": acc, "epochs": epochs,
            "train_images": len(train), "width": width, "seed": seed,
            "arch_version": DOMAIN_ARCH_VERSION, "seconds": round(time.time() - t0, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return save_domain_classifier(net.cpu(), meta, pt_path, json_path)


def _read_slot(pt_path: Path, json_path: Path) -> tuple[dict | None, bool]:
    """(metadata, whether it matches the weights' sha256); (None, False) if the slot is empty."""
    if not (pt_path.is_file() and json_path.is_file()):
        return None, False
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError:
        meta = {}
    return meta, meta.get("sha256") == sha256_file(pt_path)


def cached_domain(dataset: str, image_size: int, variant: str = ""
                  ) -> tuple[Path, dict] | None:
    """The cached classifier's path and metadata, verified by sha256; None if not cached."""
    pt_path, json_path = domain_paths(dataset, image_size, variant)
    meta, ok = _read_slot(pt_path, json_path)
    if meta is not None and not ok:
        # maybe read between another process's two renames: look again once it has finished
        with cache_lock(pt_path):
            meta, ok = _read_slot(pt_path, json_path)
    if meta is None:
        return None
    if not ok:
        raise ConfigError(f"the cached domain classifier {pt_path} does not match its sha256 "
                          f"record; run `genbench eval train-classifier --dataset {dataset} "
                          f"--force` to retrain it")
    return pt_path, meta


def ensure_domain(dataset: str, root: str | None, image_size: int, epochs: float | None = None,
                  device="cpu", quiet: bool = False, train_if_missing: bool = True,
                  ) -> tuple[Path, dict]:
    """The cached classifier of a dataset (the slot of `epochs`, see domain_variant), trained
    once if missing. Processes that miss at once train it once: the first holds the slot's
    lock while it trains; the others wait for it and then read what it wrote."""
    variant = domain_variant(epochs)
    found = cached_domain(dataset, image_size, variant)
    if found is not None:
        return found
    pt_path, _ = domain_paths(dataset, image_size, variant)
    if not train_if_missing:
        raise ConfigError(f"no domain classifier cached for {dataset} under {cache_dir()}; "
                          f"run `genbench eval train-classifier --dataset {dataset}`")
    with cache_lock(pt_path):
        found = cached_domain(dataset, image_size, variant)  # another process trained it
        if found is None:
            if not quiet:
                print(f"genbench: training the domain classifier for {dataset} once; it is "
                      f"cached under {cache_dir() / 'domain'}", file=sys.stderr, flush=True)
            # force: under the lock a weights file without its record is a save cut short
            train_and_cache_domain(dataset, root, image_size, device=device, quiet=quiet,
                                   epochs=DOMAIN_EPOCHS if epochs is None else epochs,
                                   variant=variant, force=True)
            found = cached_domain(dataset, image_size, variant)
    return found

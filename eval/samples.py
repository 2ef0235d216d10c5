"""Draw n samples from a trained model in batches, with a progress bar. Conditional models get
labels drawn from the data's class frequencies, so the sample mix matches the real one."""
from __future__ import annotations

import inspect

import torch

from eval.progress import bar
from pipeline.models import FAMILIES, can


def sample_labels(class_frequencies: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.multinomial(class_frequencies.double(), n, replacement=True, generator=gen)


@torch.no_grad()
def generate(cfg, nets, n: int, image_shape, class_frequencies: torch.Tensor | None = None,
             seed: int = 0, batch_size: int = 250, device="cpu", quiet: bool = False):
    """uint8 (n, C, H, W) samples and their labels (None when unconditional)."""
    family = FAMILIES[cfg.model]
    if not can(family, "sample"):
        raise ValueError(f"{cfg.model} has no sampler")
    labels = None
    if cfg.train.conditional:
        labels = sample_labels(class_frequencies, n, seed)
    for net in nets.values():
        net.eval()
    pixels = image_shape[1] * image_shape[2]
    # Slow (autoregressive) samplers take a progress callback: pixel positions finished.
    per_pixel = "progress" in inspect.signature(family.sample).parameters
    out = []
    with bar(n, f"sampling {cfg.model}", "img", quiet) as progress, \
            torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            y = labels[start:start + m].to(device) if labels is not None else None
            kwargs = ({"progress": lambda done, m=m: progress.update(m * done / pixels)}
                      if per_pixel else {})
            images = family.sample(cfg.family, nets, m, y, device=device, **kwargs)
            out.append(images.cpu())
            if not per_pixel:
                progress.update(m)
    return torch.cat(out), labels

"""Eval throughput on this machine: images/s for feature extraction (domain, inception), for
sampling in each family that samples, and for bits/dim evaluation. Run by hand, not in CI.

Models are freshly initialised with each family's default config: throughput does not depend
on the weights. Without Inception weights (--inception-weights / GENBENCH_INCEPTION_WEIGHTS)
the Inception row uses random weights of the same network, marked as such. One warm-up batch
is excluded from every timing.

    .venv/bin/python benchmarks/eval_throughput.py [--n 1000] [--pixelcnn-n 64] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from eval.domain_classifier import DomainClassifier, to_rgb_uint8
from eval.likelihood import nll_sums
from eval.samples import generate
from pipeline.config import Config
from pipeline.data import ImageData, load_split
from pipeline.models import FAMILIES


def timed(fn, images: int, repeat_warmup=None) -> tuple[float, float]:
    """(seconds, images/s) of fn(), after one warm-up call of repeat_warmup (or fn)."""
    (repeat_warmup or fn)()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    seconds = time.perf_counter() - t0
    return seconds, images / seconds


def rate_text(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.1f}" if rate >= 1 else f"{rate:.3g}"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def extraction(module, images: torch.Tensor, batch: int, device) -> None:
    for start in range(0, len(images), batch):
        module(to_rgb_uint8(images[start:start + batch]).to(device))


def inception_module(device, weights: str | None):
    """torch-fidelity's InceptionV3 with its real weights when they are on disk, else random
    ones (same network, same compute)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from eval.extractors import INCEPTION_FILE, inception_weights

    layers = ["2048", "logits_unbiased"]
    given = weights or os.environ.get("GENBENCH_INCEPTION_WEIGHTS")
    if given or (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE).is_file():
        path = inception_weights(given)  # sha256-checked
        return FeatureExtractorInceptionV3("inception", layers, str(path)).to(device), "weights"

    class RandomInception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initialisation

    with tempfile.NamedTemporaryFile(suffix=".pt") as f:
        torch.save({}, f.name)
        return RandomInception("inception", layers, f.name).to(device), "random weights"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="images per row (default 1000)")
    ap.add_argument("--inception-n", type=int, default=64)
    ap.add_argument("--pixelcnn-n", type=int, default=64, help="PixelCNN samples (default 64)")
    ap.add_argument("--k", type=int, default=16, help="VAE importance samples (default 16)")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--inception-weights", metavar="PATH")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    test = load_split("fashion-mnist", "test")
    rows: list[tuple[str, int, float, float]] = []

    def add(name, n, fn, warm=None):
        seconds, rate = timed(fn, n, warm)
        rows.append((name, n, seconds, rate))
        print(f"  {name:<46} {rate_text(rate):>9} img/s", file=sys.stderr, flush=True)

    images = test.images[:args.n]
    domain = DomainClassifier(10, test.image_shape[0]).to(device).eval()
    add("features: domain (28x28, CNN)", len(images),
        lambda: extraction(domain, images, args.batch, device),
        lambda: extraction(domain, images[:args.batch], args.batch, device))
    module, kind = inception_module(device, args.inception_weights)
    few = test.images[:args.inception_n]
    add(f"features: inception ({kind}, 299x299)", len(few),
        lambda: extraction(module, few, 32, device),
        lambda: extraction(module, few[:8], 8, device))

    for family in ("vae", "gan", "pixelcnn"):
        cfg = Config.from_dict({"model": family})
        torch.manual_seed(0)
        nets = {k: v.to(device).eval() for k, v in
                FAMILIES[family].build(cfg.family, test.image_shape, 0).items()}
        n = args.pixelcnn_n if family == "pixelcnn" else args.n
        batch = min(args.batch, n)

        def sample(n=n, batch=batch, cfg=cfg, nets=nets):
            generate(cfg, nets, n, test.image_shape, None, 0, batch, device, quiet=True)

        warm = (lambda: None) if family == "pixelcnn" else (  # 784 passes: no warm-up needed
            lambda cfg=cfg, nets=nets, batch=batch: generate(cfg, nets, min(batch, 8),
                                                             test.image_shape, None, 0, batch,
                                                             device, quiet=True))
        add(f"sampling: {family}", n, sample, warm)
        if family == "gan":
            continue
        data = ImageData(test.images[:args.n], test.labels[:args.n], 10)
        for k in ((1, args.k) if family == "vae" else (1,)):
            label = f"bits/dim: {family}" + (f" (IWAE k={k})" if family == "vae" else " (exact)")
            add(label, len(data),
                lambda cfg=cfg, nets=nets, k=k: nll_sums(cfg, nets, data, k, args.batch,
                                                         device=device),
                lambda cfg=cfg, nets=nets, k=k: nll_sums(
                    cfg, nets, ImageData(data.images[:50], data.labels[:50], 10), k, 50,
                    device=device))

    hw = torch.cuda.get_device_name(0) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    print(f"\neval throughput on {device.type} ({hw}); default family configs, batch {args.batch}")
    width = max(len(r[0]) for r in rows)
    print(f"| {'task':<{width}} | {'images':>6} | {'seconds':>8} | {'images/s':>9} |")
    print(f"|{'-' * (width + 2)}|{'-' * 8}|{'-' * 10}|{'-' * 11}|")
    for name, n, seconds, rate in rows:
        print(f"| {name:<{width}} | {n:>6} | {seconds:>8.2f} | {rate_text(rate):>9} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Eval throughput on this machine: images/s for feature extraction (domain, inception), for
sampling in each family that samples, and for bits/dim evaluation in each family that has a
likelihood. Run by hand; tests/test_benchmarks.py runs its --smoke.

Models are freshly initialised with each family's default config (--smoke: its TINY one):
throughput does not depend on the weights. Slow samplers (the autoregressive ones: a
GRID_SIZE under 64) draw --slow-n images. Without Inception weights (--inception-weights /
GENBENCH_INCEPTION_WEIGHTS) the Inception row uses random weights of the same network, marked
as such. One warm-up batch is excluded from every timing.

    .venv/bin/python -m benchmarks.eval_throughput [--n 1000] [--slow-n 64] [--device cpu]
    .venv/bin/python -m benchmarks.eval_throughput --smoke     # does it run? (tiny, 20 images)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import add_smoke, print_table, rate_text, timed, tiny, where
from eval.domain_classifier import DomainClassifier, to_rgb_uint8
from eval.likelihood import nll_sums
from eval.samples import generate
from pipeline.config import Config
from pipeline.data import ImageData, load_split
from pipeline.models import FAMILIES, can


def slow_sampler(family) -> bool:
    """A sequential (autoregressive) sampler: the contract gives such a family a smaller
    GRID_SIZE than the 64 images of the others."""
    return family.GRID_SIZE < 64


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="images per row (default 1000)")
    ap.add_argument("--inception-n", type=int, default=64)
    ap.add_argument("--slow-n", "--pixelcnn-n", type=int, default=64,
                    help="samples of the slow (autoregressive) samplers (default 64)")
    ap.add_argument("--k", type=int, default=16, help="VAE importance samples (default 16)")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--inception-weights", metavar="PATH")
    add_smoke(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.inception_n, args.slow_n, args.k, args.batch = 20, 4, 2, 2, 10
        args.threads = args.threads or 1  # two thrash on a busy 2-core machine
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    test = load_split("fashion-mnist", "test")
    rows: list[tuple[str, int, float, float]] = []

    def add(name, n, fn, warm=None):
        seconds, rate = timed(fn, n, warm, device)
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

    for name in FAMILIES:
        family = FAMILIES[name]
        if not (can(family, "sample") or can(family, "nll")):
            continue
        cfg = Config.from_dict({"model": name, name: tiny(name) if args.smoke else {}})
        torch.manual_seed(0)
        nets = {k: v.to(device).eval() for k, v in
                family.build(cfg.family, test.image_shape, 0).items()}
        slow = can(family, "sample") and slow_sampler(family)
        n = args.slow_n if slow else args.n
        batch = min(args.batch, n)
        if can(family, "sample"):
            def sample(n=n, batch=batch, cfg=cfg, nets=nets):
                generate(cfg, nets, n, test.image_shape, None, 0, batch, device, quiet=True)

            warm = (lambda: None) if slow else (  # 784 passes: no warm-up needed
                lambda cfg=cfg, nets=nets, batch=batch: generate(cfg, nets, min(batch, 8),
                                                                 test.image_shape, None, 0,
                                                                 batch, device, quiet=True))
            add(f"sampling: {name}", n, sample, warm)
        if not can(family, "nll"):
            continue
        data = ImageData(test.images[:args.n], test.labels[:args.n], 10)
        bound = family.LIKELIHOOD == "bound"
        for k in ((1, args.k) if bound else (1,)):
            label = f"bits/dim: {name}" + (f" (IWAE k={k})" if bound else " (exact)")
            add(label, len(data),
                lambda cfg=cfg, nets=nets, k=k: nll_sums(cfg, nets, data, k, args.batch,
                                                         device=device),
                lambda cfg=cfg, nets=nets, k=k: nll_sums(
                    cfg, nets, ImageData(data.images[:50], data.labels[:50], 10), k, 50,
                    device=device))

    print(f"\neval throughput on {device.type} ({where(device)}); "
          f"{'tiny (--smoke)' if args.smoke else 'default'} family configs, batch {args.batch}")
    print_table(["task", "images", "seconds", "images/s"],
                [[name, n, f"{seconds:.2f}", rate_text(rate)] for name, n, seconds, rate in rows],
                right=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

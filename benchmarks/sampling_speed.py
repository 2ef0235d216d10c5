"""PixelCNN sampling speed: the reference sampler (H * W * C full forward passes) against the
cached one, in images/s, with the default config at the Fashion-MNIST shape (1x28x28; --smoke:
PixelCNN's TINY config at 1x8x8, 12x fewer sequential steps). Run by hand;
tests/test_benchmarks.py runs its --smoke. Random weights: the work does not depend on them.

It also draws the reference's images again with the cached sampler (same seed, same batch size)
and says whether every uint8 value agrees.

    .venv/bin/python -m benchmarks.sampling_speed                          # CPU: 8 vs 64 images
    .venv/bin/python -m benchmarks.sampling_speed --device cuda --n 10000  # GPU: aim <= 60 s
    .venv/bin/python -m benchmarks.sampling_speed --smoke                  # does it run?
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import add_smoke, print_table, sync, tiny, where
from pipeline.models import pixelcnn

IMAGE_SHAPE = (1, 28, 28)
SMOKE_SHAPE = (1, 8, 8)


def timed_draw(sampler, cfg, nets, n: int, batch_size: int, device, seed: int = 0):
    """(uint8 images, seconds) for n images drawn in batches of batch_size."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    sync(device)
    t0 = time.perf_counter()
    out = [sampler(cfg, nets, min(batch_size, n - start), None, device=device).cpu()
           for start in range(0, n, batch_size)]
    sync(device)
    return torch.cat(out), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--n", type=int, default=None,
                    help="images for the cached sampler (default 64 on CPU, 10000 on GPU)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="images per sample() call for the cached sampler (default: all of --n)")
    ap.add_argument("--reference-n", type=int, default=8,
                    help="images for the reference sampler, one batch (default 8; 0 skips it)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_smoke(ap)
    args = ap.parse_args(argv)
    if args.smoke:  # one thread: two thrash on a busy 2-core machine
        args.n, args.reference_n, args.threads = args.n or 4, 2, args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n = args.n or (10_000 if device.type == "cuda" else 64)
    batch_size = args.batch_size or n

    cfg = pixelcnn.Config(**(tiny("pixelcnn") if args.smoke else {}))
    torch.manual_seed(0)
    shape = SMOKE_SHAPE if args.smoke else IMAGE_SHAPE
    nets = {k: v.to(device).eval() for k, v in pixelcnn.build(cfg, shape, 0).items()}
    timed_draw(pixelcnn.sample, cfg, nets, 2, 2, device)   # warm-up: kernels, allocator

    rows = []
    if args.reference_n:
        ref, ref_s = timed_draw(pixelcnn.sample_reference, cfg, nets, args.reference_n,
                                args.reference_n, device)
        rows.append(("reference", args.reference_n, args.reference_n, ref_s))
        same, same_s = timed_draw(pixelcnn.sample, cfg, nets, args.reference_n,
                                  args.reference_n, device)
        rows.append(("cached", args.reference_n, args.reference_n, same_s))
        identical = (same == ref).flatten(1).all(1).sum().item()
    _, fast_s = timed_draw(pixelcnn.sample, cfg, nets, n, batch_size, device)
    rows.append(("cached", n, batch_size, fast_s))

    size = "x".join(map(str, shape))
    print(f"PixelCNN sampling, {'tiny' if args.smoke else 'default'} config {cfg}, {size}, "
          f"{where(device)}")
    print_table(["sampler", "images", "batch", "seconds", "images/s"],
                [[name, images, batch, f"{seconds:.2f}", f"{images / seconds:.3g}"]
                 for name, images, batch, seconds in rows])
    if args.reference_n:
        print(f"speed-up, same batch of {args.reference_n}: {ref_s / same_s:.0f}x; "
              f"cached with batches of {batch_size} against the reference: "
              f"{(n / fast_s) / (args.reference_n / ref_s):.0f}x")
        print(f"same seed, batch of {args.reference_n}: {identical}/{args.reference_n} images "
              f"identical to the reference's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""--metrics bpd: bits/dim on the test split, exact or a bound as the family declares; families
that only reconstruct log mse_test/psnr_test instead (a stand-in, not a likelihood)."""
from __future__ import annotations

from eval.likelihood import data_description, nll_sums, pixel_bits, reconstruction_metrics
from eval.metrics.context import EvalContext
from pipeline import schema
from pipeline.data import ImageData
from pipeline.models import can


def compute(ctx: EvalContext, names: list[str]) -> None:
    opts, model, family = ctx.opts, ctx.model, ctx.family
    cfg, test = model.cfg, model.test
    n = min(opts.bpd_images or len(test), len(test))
    data = test if n == len(test) else ImageData(test.images[:n], test.labels[:n],
                                                 test.num_classes)
    if can(family, "reconstruct") and not can(family, "nll"):  # a stand-in for a likelihood
        ctx.metrics.update(reconstruction_metrics(cfg, model.nets, data, opts.batch_size,
                                                  ctx.device, opts.quiet))
        ctx.stamp("recon", "split", "test")
        ctx.stamp("recon", "images", n)
        ctx.stamp("recon", "scale", "mse on [-1, 1] pixels; psnr for [0, 1] pixels")
    if not can(family, "nll"):
        reason = f"not applicable: {family.LIKELIHOOD_NOTE}"
        ctx.notes.append(f"bpd {reason}")
        ctx.stamp("bpd", value=reason)
        return
    if opts.workers > 1:
        sums = ctx.nll_runner(model.payload, k=opts.k, images=n, batch_size=opts.batch_size,
                              seed=opts.seed, workers=opts.workers)
    else:
        sums = nll_sums(cfg, model.nets, data, opts.k, opts.batch_size, seed=opts.seed,
                        device=ctx.device, quiet=opts.quiet)
    bits = pixel_bits(family, cfg.family)
    ctx.metrics[schema.bpd_key(bits)] = sums.bits_per_dim
    k = opts.k if family.LIKELIHOOD == "bound" else 1  # exact likelihoods ignore k
    what = family.LIKELIHOOD_NOTE + (f"; k={k}" if family.LIKELIHOOD == "bound" else "")
    for name, value in ((None, what), ("k", k), ("split", "test"), ("images", sums.images),
                        ("data", data_description(bits)), ("workers", opts.workers),
                        ("seed", opts.seed),
                        ("conditional", str(cfg.train.conditional).lower())):
        ctx.stamp("bpd", name, value)

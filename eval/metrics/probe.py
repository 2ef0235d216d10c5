"""--metrics probe: linear-probe accuracy of the frozen encoder (eval/probe.py)."""
from __future__ import annotations

from eval.metrics.context import EvalContext, subset
from eval.probe import encode_all, probe_accuracy
from pipeline import schema


def compute(ctx: EvalContext, names: list[str]) -> None:
    opts, model = ctx.opts, ctx.model
    cfg = model.cfg
    if cfg.train.conditional:
        reason = "not applicable: a conditional encoder takes the label as input"
        ctx.notes.append(f"probe {reason}")
        ctx.stamp("probe", value=reason)
        return
    fit_set = subset(ctx.train, opts.probe_images or len(ctx.train), opts.seed)
    z_train = encode_all(cfg, model.nets, fit_set, device=ctx.device, quiet=opts.quiet)
    z_test = encode_all(cfg, model.nets, model.test, device=ctx.device, quiet=opts.quiet)
    ctx.metrics[schema.PROBE_ACCURACY] = probe_accuracy(z_train, fit_set.labels, z_test,
                                                        model.test.labels,
                                                        model.test.num_classes)
    ctx.stamp("probe", value="multinomial logistic regression (L-BFGS, L2 1e-4) on the "
              "standardized encoder mean z")
    ctx.stamp("probe", "train_images", len(fit_set))
    ctx.stamp("probe", "test_images", len(model.test))

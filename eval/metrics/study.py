"""--metrics ood and bayes: the model's OOD scores and its Bayes classifier, next to the domain
classifier (trained without the run's excluded classes, if any). eval/ood/ does the work."""
from __future__ import annotations

from eval.metrics.context import EvalContext
from pipeline import schema


def compute(ctx: EvalContext, names: list[str]) -> None:
    from eval.ood import evaluate_ood
    from eval.ood.baseline import baseline_classifier
    from eval.ood.bayes import evaluate_bayes, not_applicable

    opts, model, device = ctx.opts, ctx.model, ctx.device
    cfg, d = model.cfg, model.cfg.data
    classifier = baseline_classifier(d.dataset, d.root, d.image_size, d.exclude_classes, device,
                                     opts.quiet, opts.domain_epochs)
    if "ood" in names:
        ood = evaluate_ood(model, ctx.train, classifier, sets=opts.ood_sets,
                           images=opts.ood_images, k=opts.k,
                           background_steps=opts.ood_background_steps,
                           batch_size=opts.batch_size, seed=opts.seed, device=device,
                           quiet=opts.quiet)
        ctx.metrics.update(ood.metrics)
        ctx.tags.update(ood.tags)
        ctx.notes.extend(ood.notes)
        ctx.record["ood_score_means"] = ood.means
        if ood.histograms:
            ctx.figures["ood_histograms.png"] = ood.histograms
    if "bayes" in names:
        reason = not_applicable(ctx.family, cfg.train.conditional)
        if reason:
            ctx.notes.append(f"bayes not applicable: {reason}")
            ctx.tags[schema.eval_tag(schema.BAYES)] = f"not applicable: {reason}"
            return
        found, stamp = evaluate_bayes(model, ctx.train, classifier, images=opts.bayes_images,
                                      k=opts.k, batch_size=opts.batch_size, seed=opts.seed,
                                      device=device, quiet=opts.quiet)
        ctx.metrics.update(found)
        ctx.tags.update(stamp)

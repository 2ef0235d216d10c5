"""Bayes' rule on a conditional likelihood model: p(y|x) = p(x|y) p(y) / sum_y' p(x|y') p(y').

One pass of the model per class gives log p(x|y) for every y (an exact log-likelihood for an
autoregressive model, the IWAE bound for a VAE); p(y) is the train split's class frequencies, so
a class the run never trained on (data.exclude_classes) has p(y) = 0 and costs no pass. The
normaliser log p(x) = logsumexp_y(log p(x|y) + log p(y)) is the model's marginal likelihood, an
OOD score in its own right. Everything here is in nats; scores and metrics are pure functions.
"""
from __future__ import annotations

import math

import torch

from pipeline import schema

ECE_BINS = 15  # Guo et al. 2017


def log_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log class frequencies (K,) float64; -inf for a class with no example."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.log(counts / counts.sum())


@torch.no_grad()
def class_log_likelihoods(family, family_cfg, nets, x: torch.Tensor, prior: torch.Tensor,
                          k: int = 1, seed: int = 0) -> torch.Tensor:
    """log p(x|y) in nats (B, K) float64 for every class y with p(y) > 0 (-inf elsewhere).

    Every class sees the same random numbers (the VAE's importance samples), so the classes are
    compared on common noise rather than on independent draws."""
    out = torch.full((len(x), len(prior)), -math.inf, dtype=torch.float64)
    for c in torch.nonzero(torch.isfinite(prior)).flatten().tolist():
        y = torch.full((len(x),), c, dtype=torch.long, device=x.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out[:, c] = -family.nll(family_cfg, nets, x, y, k=k).double().cpu()
    return out


def log_posterior(loglik: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """log p(y|x) (B, K): softmax over classes of log p(x|y) + log p(y)."""
    return torch.log_softmax(loglik + prior, dim=1)


def log_marginal(loglik: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """log p(x) = logsumexp_y(log p(x|y) + log p(y)) in nats (B,)."""
    return torch.logsumexp(loglik + prior, dim=1)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor,
                               bins: int = ECE_BINS) -> float:
    """sum over equal-width confidence bins (b/B, (b+1)/B] of |bin| / N * |accuracy - confidence|,
    the confidence being the top class probability."""
    conf, pred = probs.double().max(1)
    correct = (pred == labels).double()
    which = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.double().mean().item() * abs(
                correct[in_bin].mean().item() - conf[in_bin].mean().item())
    return total


def classification_metrics(log_probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy, NLL (nats per image, -log p(true y|x)) and ECE of a (B, K) log-probability
    table."""
    log_probs = log_probs.double()
    labels = labels.long()
    return {"accuracy": (log_probs.argmax(1) == labels).double().mean().item(),
            "nll": -log_probs.gather(1, labels[:, None]).mean().item(),
            "ece": expected_calibration_error(log_probs.exp(), labels)}


# --- the evaluation of a run (`genbench eval --metrics bayes`) ---------------------------------
def not_applicable(family, conditional: bool) -> str | None:
    """Why Bayes' rule cannot classify with this model, or None when it can."""
    from pipeline.models import can

    if not can(family, "nll"):  # the registry holds LIKELIHOOD None <=> no nll()
        return "needs a likelihood p(x|y); this family has none"
    if not conditional:
        return "needs a conditional model p(x|y) (train with train.conditional=true)"
    return None


def evaluate_bayes(model, train, classifier, *, images: int, k: int = 1, batch_size: int = 250,
                   seed: int = 0, device="cpu", quiet: bool = True):
    """Accuracy, NLL and ECE of the Bayes classifier on `images` in-distribution test images,
    and of the domain classifier on the same images. model: an eval.load.LoadedModel; train:
    its train split (the class prior). Returns (metrics, tags)."""
    from eval.likelihood import batch_seed
    from eval.progress import bar
    from pipeline.models import FAMILIES

    cfg = model.cfg
    family = FAMILIES[cfg.model]
    test = model.test
    n = min(images, len(test))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=gen)[:n].sort().values if n < len(test) \
        else torch.arange(len(test))
    x_all, labels = test.images[idx], test.labels[idx]
    prior = log_prior(train.labels, train.num_classes)
    parts = []
    with bar(n, "Bayes classifier", "img", quiet) as progress:
        for b, start in enumerate(range(0, n, batch_size)):
            x = x_all[start:start + batch_size].to(device)
            parts.append(class_log_likelihoods(family, cfg.family, model.nets, x, prior, k,
                                               batch_seed(seed, b)))
            progress.update(len(x))
    loglik = torch.cat(parts)
    metrics = {schema.classification_key(schema.BAYES, k_): v for k_, v in
               classification_metrics(log_posterior(loglik, prior), labels).items()}
    def tag(*parts) -> str:
        return schema.eval_tag(schema.BAYES, *parts)

    tags = {tag(): "p(y|x) = p(x|y) p(y) / sum_y' p(x|y') p(y'), one pass per class; "
                   "accuracy, NLL in nats, ECE over 15 equal-width confidence bins",
            tag("images"): str(n), tag("seed"): str(seed),
            tag("prior"): "train split class frequencies: " + ", ".join(
                f"{p:.3f}" for p in prior.exp().tolist()),
            tag("likelihood"): f"{getattr(family, 'LIKELIHOOD', None) or 'nll'}"
                               + (f", k={k}" if k > 1 else ""),
            tag("px"): "p(x) = sum_y p(x|y) p(y) is the bpd OOD score of conditional "
                       "models (--metrics ood)"}
    if classifier is not None:
        log_probs = classifier.log_probs(x_all, batch_size, device)
        metrics.update({schema.classification_key(schema.CLASSIFIER, k_): v for k_, v in
                        classification_metrics(log_probs, labels).items()})
        tags[tag("classifier")] = (f"domain classifier sha256 {classifier.sha256[:16]}, "
                                   f"trained on the {classifier.trained_on}")
    return metrics, tags

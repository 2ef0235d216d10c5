"""Per-image out-of-distribution scores of a trained model; higher = more out of distribution.

Which scores a family gets is asked of its module, never of its name:

    bpd         can(family, "nll"): -log2 p(x) / D. A conditional model is scored by its
                marginal p(x) = sum_y p(x|y) p(y) (one pass per class; eval/ood/bayes.py).
    ratio       likelihood families: bpd minus the bpd of a background model of the same family
                trained briefly on perturbed images (Ren et al. 2019: the negative log-likelihood
                ratio, which cancels what both models find easy, such as flat backgrounds).
    complexity  likelihood families: bpd minus the image's PNG-compressed length in bits/dim
                (Serra et al. 2020), which cancels how simple an image is.
    recon       can(family, "reconstruct"): mean squared reconstruction error on [-1, 1] pixels.
    neglogd     can(family, "discriminate"): -log D(x), the GAN discriminator's "not real" score.
    msp         the domain classifier: 1 - max softmax probability (Hendrycks & Gimpel 2017),
                the discriminative baseline (eval/ood/baseline.py).

For a conditional model, recon and neglogd take the most favourable class (the minimum over
classes with p(y) > 0): an input any class explains well is in distribution.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eval.ood.bayes import class_log_likelihoods, log_marginal
from eval.likelihood import batch_seed
from pipeline.models import FAMILIES, can
from pipeline.models.layers import to_float

DESCRIPTIONS = {
    "bpd": "bits/dim, -log2 p(x) / D (conditional models: the marginal sum_y p(x|y) p(y))",
    "ratio": "bits/dim minus a background model's bits/dim (Ren et al. 2019)",
    "complexity": "bits/dim minus the PNG-compressed length in bits/dim (Serra et al. 2020)",
    "recon": "reconstruction MSE on [-1, 1] pixels (conditional: the best class)",
    "neglogd": "-log D(x) of the discriminator (conditional: the best class)",
    "msp": "1 - max softmax probability of the domain classifier (Hendrycks & Gimpel 2017)",
}
LABELS = {"bpd": "bits/dim", "ratio": "likelihood ratio", "complexity": "input complexity",
          "recon": "reconstruction error", "neglogd": "-log D(x)",
          "msp": "max softmax (classifier)"}


def has_likelihood(family) -> bool:
    return can(family, "nll") and getattr(family, "LIKELIHOOD", "declared") is not None


def family_scores(family) -> tuple[str, ...]:
    """The model scores that apply to a family (msp belongs to the classifier, not the family)."""
    out: list[str] = []
    if has_likelihood(family):
        out += ["bpd", "ratio", "complexity"]
    if can(family, "reconstruct"):
        out.append("recon")
    if can(family, "discriminate"):
        out.append("neglogd")
    return tuple(out)


def png_bits_per_dim(images: torch.Tensor, pixel_bits: int = 8) -> torch.Tensor:
    """The PNG-compressed length (zlib level 9) of each uint8 (C, H, W) image, in bits per
    sub-pixel (N,) float64: Serra et al.'s complexity L(x). pixel_bits=1 compresses the image
    binarized at 128 (1-bit PNG), the data a Bernoulli likelihood models."""
    from PIL import Image

    if pixel_bits not in (1, 8):
        raise ValueError(f"PNG complexity of {pixel_bits}-bit pixels is not implemented")
    out = torch.empty(len(images), dtype=torch.float64)
    for i, img in enumerate(images.cpu()):
        arr = img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        if pixel_bits == 1:
            pil = pil.convert("L").point(lambda v: 255 if v > 127 else 0).convert("1")
        buf = io.BytesIO()
        pil.save(buf, format="PNG", compress_level=9)
        out[i] = 8 * buf.tell() / img.numel()
    return out


@dataclass
class ModelScorer:
    """Scores uint8 images with one trained model. prior: log p(y) (K,) for a conditional model,
    None for an unconditional one."""

    family_name: str
    family_cfg: object
    nets: dict
    prior: torch.Tensor | None = None
    k: int = 1                 # VAE importance samples
    batch_size: int = 250
    device: torch.device | str = "cpu"
    seed: int = 0

    @property
    def family(self):
        return FAMILIES[self.family_name]

    def classes(self) -> list[int]:
        return torch.nonzero(torch.isfinite(self.prior)).flatten().tolist()

    def _batched(self, images: torch.Tensor, fn) -> torch.Tensor:
        parts = []
        for b, start in enumerate(range(0, len(images), self.batch_size)):
            x = images[start:start + self.batch_size].to(self.device)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(batch_seed(self.seed, b))
                parts.append(fn(x, batch_seed(self.seed, b)).double().cpu())
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)

    def _best_class(self, x: torch.Tensor, fn) -> torch.Tensor:
        """fn(x, y) for an unconditional model; its minimum over classes for a conditional one."""
        if self.prior is None:
            return fn(x, None)
        per_class = [fn(x, torch.full((len(x),), c, dtype=torch.long, device=x.device))
                     for c in self.classes()]
        return torch.stack(per_class).min(0).values

    @torch.no_grad()
    def bits_per_dim(self, images: torch.Tensor) -> torch.Tensor:
        dims = images[0].numel()

        def score(x, seed):
            if self.prior is None:
                nats = self.family.nll(self.family_cfg, self.nets, x, None, k=self.k).double()
            else:
                loglik = class_log_likelihoods(self.family, self.family_cfg, self.nets, x,
                                               self.prior, self.k, seed)
                nats = -log_marginal(loglik, self.prior)
            return nats / (dims * math.log(2))

        return self._batched(images, score)

    @torch.no_grad()
    def reconstruction_error(self, images: torch.Tensor) -> torch.Tensor:
        def mse(x, y):
            recon = self.family.reconstruct(self.family_cfg, self.nets, x, y)
            return (to_float(recon) - to_float(x)).double().pow(2).flatten(1).mean(1)

        return self._batched(images, lambda x, _: self._best_class(x, mse))

    @torch.no_grad()
    def neg_log_d(self, images: torch.Tensor) -> torch.Tensor:
        def neglogd(x, y):  # -log sigmoid(logit) = softplus(-logit), finite for any logit
            return F.softplus(-self.family.discriminate(self.family_cfg, self.nets, x, y).double())

        return self._batched(images, lambda x, _: self._best_class(x, neglogd))

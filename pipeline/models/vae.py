"""(beta-)VAE: q(z|x) = N(mu, sigma^2), p(z) = N(0, I), p(x|z) a discrete likelihood over 8-bit
pixels, so log-likelihoods are in nats per image and bits/dim need no dequantization offset.

loss = reconstruction NLL + beta * KL(q(z|x) || p(z)); beta is a value, not a subclass. Whatever
beta trains, the reported bound is the beta = 1 ELBO (k = 1) or the IWAE bound with k samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.layers import ConvDecoder, ConvEncoder, to_float, to_uint8, unwrap, with_labels

LIKELIHOODS = ("logistic", "bernoulli")


@dataclass(frozen=True)
class Config:
    latent_dim: int = 32
    width: int = 32
    beta: float = 1.0
    likelihood: str = "logistic"  # discretized logistic; "bernoulli" binarizes the data at 128
    lr: float = 1e-3

    def validate(self) -> None:
        if self.beta < 0:
            raise ValueError(f"vae.beta must be >= 0, got {self.beta}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"vae.likelihood must be one of {', '.join(LIKELIHOODS)}, "
                             f"got {self.likelihood!r}")


PHASES = ("model",)
PROGRESS_KEYS = ("bpd", "recon", "kl")
# Log-uniform: both act multiplicatively.
TUNE_SPACE = {"beta": {"loguniform": [0.1, 10.0]}, "lr": {"loguniform": [1e-4, 3e-3]}}
SWEEP_METRIC, SWEEP_MODE = "val_bpd", "min"   # the beta = 1 bound, whatever beta trains
LIKELIHOOD = "bound"
LIKELIHOOD_NOTE = "IWAE upper bound on -log p(x), k importance samples (k=1 is the ELBO), beta=1"
GRID_SIZE = 64
TINY = {"width": 8, "latent_dim": 8}  # tests, --smoke: seconds on 2 cores
DDP_OPTIONS: dict[str, dict] = {}


class VAE(nn.Module):
    def __init__(self, cfg: Config, image_shape, num_classes: int):
        super().__init__()
        c = image_shape[0]
        self.cfg, self.num_classes = cfg, num_classes
        self.encoder = ConvEncoder(image_shape, cfg.width, 2 * cfg.latent_dim, num_classes)
        out_channels = 2 * c if cfg.likelihood == "logistic" else c  # (mean, log-scale) or logit
        self.decoder = ConvDecoder(image_shape, cfg.width, cfg.latent_dim + num_classes,
                                   out_channels)

    def posterior(self, xf, y):
        mu, logvar = self.encoder(xf, y).chunk(2, dim=1)  # (B, D) each
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z, y):
        return self.decoder(with_labels(z, y, self.num_classes))

    def forward(self, xf, y=None):
        mu, logvar = self.posterior(xf, y)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return mu, logvar, self.decode(z, y)


def discretized_logistic_logp(x: torch.Tensor, mean: torch.Tensor,
                              log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per sub-pixel for x uint8, under a logistic on [-1, 1] binned into 256 levels
    (PixelCNN++); the edge bins take the tails, so the 256 probabilities sum to 1."""
    xf = to_float(x)
    log_scale = log_scale.clamp(min=-7.0)
    centered, inv_s = xf - mean, torch.exp(-log_scale)
    plus_in, min_in = inv_s * (centered + 1 / 255), inv_s * (centered - 1 / 255)
    log_cdf_plus = plus_in - F.softplus(plus_in)          # log sigmoid(plus_in): bin 0
    log_one_minus_cdf_min = -F.softplus(min_in)            # log(1 - sigmoid(min_in)): bin 255
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_s * centered                              # where cdf_delta underflows
    log_pdf_mid = mid_in - log_scale - 2 * F.softplus(mid_in) - math.log(127.5)
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
    return torch.where(x == 0, log_cdf_plus, torch.where(x == 255, log_one_minus_cdf_min, inner))


def log_px_given_z(cfg: Config, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) in nats per image (B,)."""
    out = out.float()
    if cfg.likelihood == "logistic":
        mean, log_scale = out.chunk(2, dim=1)
        logp = discretized_logistic_logp(x, mean, log_scale)
    else:
        logp = -F.binary_cross_entropy_with_logits(out, (x > 127).float(), reduction="none")
    return logp.flatten(1).sum(1)


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) in nats per image (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def pixel_bits(cfg: Config) -> int:
    """Bits per sub-pixel of the data the likelihood is over: 8 (256 levels), or 1 for the
    Bernoulli decoder, which models x > 127. A uniform model scores this many bits/dim, so a
    Bernoulli number must never share a column with 8-bit likelihoods."""
    return 8 if cfg.likelihood == "logistic" else 1


def build(cfg: Config, image_shape, num_classes: int) -> dict[str, nn.Module]:
    return {"model": VAE(cfg, image_shape, num_classes)}


def make_optimizers(cfg: Config, nets) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(nets["model"].parameters(), lr=cfg.lr)}


def loss(cfg: Config, nets, x: torch.Tensor, y, phase: str) -> dict[str, torch.Tensor]:
    mu, logvar, out = nets["model"](to_float(x), y)
    recon = -log_px_given_z(cfg, out, x)   # (B,) nats
    kl = kl_to_prior(mu.float(), logvar.float())
    dims = x[0].numel()
    loss_value = (recon + cfg.beta * kl).mean() / dims  # per dim, so lr is resolution-free
    bpd = (recon + kl).mean().detach() / (dims * math.log(2))  # beta = 1 negative ELBO
    return {"loss": loss_value, "recon": recon.mean().detach(), "kl": kl.mean().detach(),
            "bpd": bpd}


@torch.no_grad()
def nll(cfg: Config, nets, x: torch.Tensor, y=None, k: int = 1) -> torch.Tensor:
    """-log p(x) upper bound in nats per image (B,): the IWAE bound with k samples (k = 1 is the
    negative ELBO at beta = 1). Larger k is never looser in expectation."""
    model = unwrap(nets["model"])
    xf = to_float(x)
    mu, logvar = model.posterior(xf, y)
    std = torch.exp(0.5 * logvar)
    log_w = []
    for _ in range(k):
        eps = torch.randn_like(mu)
        z = mu + std * eps
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(1)
        log_qz = -0.5 * (eps.pow(2) + logvar + math.log(2 * math.pi)).sum(1)
        log_w.append(log_px_given_z(cfg, model.decode(z, y), x) + log_pz - log_qz)
    return -(torch.logsumexp(torch.stack(log_w), dim=0) - math.log(k))


def _mean_image(cfg: Config, out: torch.Tensor) -> torch.Tensor:
    """The decoder's mean image: what sample grids and FID use (pixel noise only adds blur)."""
    if cfg.likelihood == "logistic":
        return to_uint8(out.float().chunk(2, dim=1)[0])
    return (torch.sigmoid(out.float()) * 255).round().to(torch.uint8)


@torch.no_grad()
def sample(cfg: Config, nets, n: int, labels=None, device="cpu") -> torch.Tensor:
    model = unwrap(nets["model"])
    z = torch.randn(n, cfg.latent_dim, device=device)
    return _mean_image(cfg, model.decode(z, labels))


@torch.no_grad()
def reconstruct(cfg: Config, nets, x: torch.Tensor, y=None) -> torch.Tensor:
    model = unwrap(nets["model"])
    mu, _ = model.posterior(to_float(x), y)
    return _mean_image(cfg, model.decode(mu, y))


@torch.no_grad()
def encode(cfg: Config, nets, x: torch.Tensor, y=None) -> torch.Tensor:
    return unwrap(nets["model"]).posterior(to_float(x), y)[0]

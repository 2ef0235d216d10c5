"""DCGAN: G maps z ~ N(0, I) to an image, D scores real (label 1) against generated (label 0).

G's loss is the non-saturating -log D(G(z)) by default: min log(1 - D(G(z))) ("minimax") has
vanishing gradients while D easily rejects early samples. At the optimum D(x) -> 0.5, so the
logged means of D(x) and D(G(z)) show where a run is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.layers import ConvDecoder, ConvEncoder, to_float, to_uint8, unwrap, with_labels

G_LOSSES = ("non-saturating", "minimax")


@dataclass(frozen=True)
class Config:
    latent_dim: int = 64
    width: int = 64
    g_loss: str = "non-saturating"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5   # Adam's beta1, 0.5 as in DCGAN
    beta2: float = 0.999

    def validate(self) -> None:
        if self.g_loss not in G_LOSSES:
            raise ValueError(f"gan.g_loss must be one of {', '.join(G_LOSSES)}, "
                             f"got {self.g_loss!r}")
        if not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1:
            raise ValueError("gan.beta1 and gan.beta2 must lie in [0, 1)")


# Published FIDs of this model, with the protocol they were measured under; report/references.py
# shows one only beside a number measured the same way (Inception features, the same n, the test
# split) by a run whose config matches `when`.
_LUCIC = ("Lucic et al. 2018, Are GANs Created Equal? A Large-Scale Study (NeurIPS), as tabulated "
          "in Dai & Wipf 2019, Diagnosing and Enhancing VAE Models (ICLR), Table 1")
_LUCIC_PROTOCOL = ("FID of 10,000 generated images against the 10,000 test images, InceptionV3 "
                   "pool3 features (2015-12-05 TF graph; grey images repeated to 3 channels, "
                   "resized to 299 by TF's bilinear resize), as in the study's released code "
                   "(google/compare_gan eval_gan_lib.py, num_test_examples=10000, split test); "
                   "best hyperparameters of a large search, ± as the table reports it")
PUBLISHED = (
    {"model": "NS-GAN", "dataset": "fashion-mnist", "metric": "fid_inception", "value": 26.5,
     "spread": 1.6, "source": _LUCIC, "url": "arxiv.org/abs/1711.10337, arxiv.org/abs/1903.05789",
     "n_fake": 10000, "n_real": 10000, "reference_split": "test",
     "when": {"g_loss": "non-saturating", "train.conditional": False}, "protocol": _LUCIC_PROTOCOL},
    {"model": "NS-GAN", "dataset": "mnist", "metric": "fid_inception", "value": 6.8,
     "spread": 0.5, "source": _LUCIC, "url": "arxiv.org/abs/1711.10337, arxiv.org/abs/1903.05789",
     "n_fake": 10000, "n_real": 10000, "reference_split": "test",
     "when": {"g_loss": "non-saturating", "train.conditional": False}, "protocol": _LUCIC_PROTOCOL},
)

# D steps first on fresh fakes, then G against the updated D (one optimizer each).
PHASES = ("discriminator", "generator")
PROGRESS_KEYS = ("d_loss", "g_loss", "d_real", "d_fake")
TUNE_SPACE = {"lr_g": {"loguniform": [5e-5, 1e-3]}, "lr_d": {"loguniform": [5e-5, 1e-3]},
              "beta1": {"loguniform": [0.05, 0.9]}}
SWEEP_METRIC, SWEEP_MODE = None, "min"   # no validation loss: sweeps use a small-sample FID
LIKELIHOOD = None
LIKELIHOOD_NOTE = "a GAN has no likelihood"
GRID_SIZE = 64
TINY = {"width": 8, "latent_dim": 16}  # tests, --smoke: seconds on 2 cores
# Samples come from an exponential moving average of G's weights (pipeline/ema.py): it damps
# the oscillation of the game (Yazici et al. 2019, "The Unusual Effectiveness of Averaging in
# GAN Training", ICLR). train.ema_decay overrides the decay; 0 samples from the raw G.
EMA = {"generator": 0.999}
# Two D forwards (real, fake) before one backward: with BatchNorm, a DDP-wrapped D must not
# broadcast buffers, or the second forward rewrites them in place (pytorch #175024).
DDP_OPTIONS = {"discriminator": {"broadcast_buffers": False}}
# The report's training curves: D's mean outputs in one panel, with the game's optimum.
CURVE_PANELS = {"discriminator output": {"labels": {"d_real": "D(x)", "d_fake": "D(G(z))"},
                                         "line": 0.5, "ylim": (0.0, 1.0),
                                         "note": "D(x) and D(G(z)) meet at 0.5 at the optimum"}}


class Generator(nn.Module):
    def __init__(self, cfg: Config, image_shape, num_classes: int):
        super().__init__()
        self.num_classes, self.latent_dim = num_classes, cfg.latent_dim
        self.net = ConvDecoder(image_shape, cfg.width, cfg.latent_dim + num_classes,
                               image_shape[0], norm=True)

    def forward(self, z, y=None):
        return torch.tanh(self.net(with_labels(z, y, self.num_classes)))


class Discriminator(nn.Module):
    """Outputs a logit. Has BatchNorm, hence broadcast_buffers=False under DDP (DDP_OPTIONS)."""

    def __init__(self, cfg: Config, image_shape, num_classes: int):
        super().__init__()
        self.net = ConvEncoder(image_shape, cfg.width, 1, num_classes, norm=True, slope=0.2)

    def forward(self, x, y=None):
        return self.net(x, y).squeeze(1)


def build(cfg: Config, image_shape, num_classes: int) -> dict[str, nn.Module]:
    nets = {"generator": Generator(cfg, image_shape, num_classes),
            "discriminator": Discriminator(cfg, image_shape, num_classes)}
    for net in nets.values():  # DCGAN init: N(0, 0.02) weights
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
    return nets


def make_optimizers(cfg: Config, nets) -> dict[str, torch.optim.Optimizer]:
    betas = (cfg.beta1, cfg.beta2)
    return {"discriminator": torch.optim.Adam(nets["discriminator"].parameters(), cfg.lr_d,
                                              betas=betas),
            "generator": torch.optim.Adam(nets["generator"].parameters(), cfg.lr_g, betas=betas)}


def loss(cfg: Config, nets, x: torch.Tensor, y, phase: str) -> dict[str, torch.Tensor]:
    g, d = nets["generator"], nets["discriminator"]
    z = torch.randn(x.shape[0], cfg.latent_dim, device=x.device)
    if phase == "discriminator":
        with torch.no_grad():
            fake = unwrap(g)(z, y)
        # Real and fake go through D separately, as in G's phase, so BatchNorm sees the same
        # batch composition in both phases (one forward on [real; fake] lets G fool a D whose
        # statistics differ between phases). Two forwards before one backward on a DDP-wrapped
        # D with BatchNorm need broadcast_buffers=False (pytorch #175024; see loop.build_nets).
        real_logit = d(to_float(x), y).float()
        fake_logit = d(fake.to(torch.float32), y).float()
        d_loss = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                  + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))
        return {"loss": d_loss, "d_loss": d_loss.detach(),
                "d_real": torch.sigmoid(real_logit).mean().detach(),
                "d_fake": torch.sigmoid(fake_logit).mean().detach()}
    # G phase: D only passes gradients back to G, so call the bare D: its own gradients here
    # are discarded (zeroed at the next D phase) and need no all-reduce.
    fake_logit = unwrap(d)(g(z, y), y).float()
    if cfg.g_loss == "non-saturating":
        g_loss = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
    else:  # minimise log(1 - D(G(z))) = -softplus(logit)
        g_loss = -F.softplus(fake_logit).mean()
    return {"loss": g_loss, "g_loss": g_loss.detach()}


@torch.no_grad()
def sample(cfg: Config, nets, n: int, labels=None, device="cpu") -> torch.Tensor:
    g = unwrap(nets["generator"])
    return to_uint8(g(torch.randn(n, cfg.latent_dim, device=device), labels))


@torch.no_grad()
def discriminate(cfg: Config, nets, x: torch.Tensor, y=None) -> torch.Tensor:
    """D's logits (B,) for uint8 images: log D(x) = logsigmoid(logit), a "real data?" score."""
    return unwrap(nets["discriminator"])(to_float(x), y).float()

"""Multi-scale normalizing flow (RealNVP, Dinh et al. 2017; Glow, Kingma & Dhariwal 2018):
an invertible map from dequantized 8-bit images to Gaussian latents, so the only gap between
its bits/dim and the true -log2 P(x) is the dequantization bound's.

Data: u = (x + U) / 256 with U ~ Uniform[0, 1)^D, squeezed to v = a + (1 - 2a) u (a = 1e-5, so
v never reaches 0 or 1) and mapped through the probit z0 = Phi^-1(v), the standard normal's
inverse CDF. With a standard normal base the probit makes the identity flow exactly the uniform
density on the cube: a flow that does nothing scores 8 - log2(1 - 2a) = 8.00003 bits/dim on any
data, the same 8 bits as a uniform 256-way softmax. The bits/dim are on the discrete 8-bit scale
of the other families: -log P(x) <= -E_U log p(u) + D log 256 (the bin has volume 256^-D in u),
with the log-determinants of the scaling and the probit included in log p(u).

Each scale: ActNorm + affine coupling with a checkerboard mask (`couplings` times, masks
alternating), a squeeze (2x2 pixels -> 4x the channels), ActNorm + optional invertible 1x1 conv +
affine coupling on channel halves (`couplings` times, halves alternating), then half the channels
are factored out as latents. A last stage of checkerboard couplings ends the flow. Coupling
log-scales are tanh-bounded (|log s| <= 2) and every coupling's last conv starts at zero, ActNorm
at the identity (a learned init, the same on every DDP rank) and 1x1 convs orthogonal: a freshly
built flow is the identity up to a rotation, i.e. exactly 8.00003 bits/dim.

Class-conditional (num_classes > 0): the base Gaussian of every latent has a learned mean and
log-std per class (zero at the start); the invertible map itself ignores the label, so encode()
needs none. The flow runs in float32 even under bf16 autocast: log-determinants summed over
thousands of dimensions, and inverses, need the precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.layers import unwrap

ALPHA = 1e-5         # v = ALPHA + (1 - 2 ALPHA) u keeps the probit finite at u = 0 and u = 1
LOG_SCALE_BOUND = 2.0
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class Config:
    hidden: int = 64          # channels of each coupling's network
    couplings: int = 4        # coupling layers per stage (even: masks and halves alternate)
    scales: int = 2           # squeeze + factor-out steps; H and W must be multiples of 2**scales
    invconv: bool = True      # an invertible 1x1 conv before each channel coupling (Glow)
    temperature: float = 1.0  # std of the base Gaussian when sampling (Glow uses 0.7 for looks)
    grad_clip: float = 100.0  # gradient-norm clip before each Adam step; 0 turns it off
    lr: float = 1e-3

    def validate(self) -> None:
        for name in ("hidden", "couplings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"flow.{name} must be positive, got {getattr(self, name)}")
        if self.scales < 0:
            raise ValueError(f"flow.scales must be >= 0, got {self.scales}")
        if self.temperature <= 0:
            raise ValueError(f"flow.temperature must be > 0, got {self.temperature}")
        if self.grad_clip < 0:
            raise ValueError(f"flow.grad_clip must be >= 0 (0: off), got {self.grad_clip}")


# Published likelihoods, test NLL in bits/dim on 8-bit pixels with uniform dequantization (an
# upper bound, as ours); report/references.py shows them beside bpd_test of a run on that data.
PUBLISHED = (
    {"model": "RealNVP", "dataset": "cifar10", "metric": "bpd_test", "value": 3.49,
     "source": "Dinh et al. 2017, Density estimation using Real NVP, Table 1",
     "url": "arxiv.org/abs/1605.08803", "note": "test NLL, bits/dim",
     "protocol": "uniform dequantization bound on the 10,000 CIFAR-10 test images, 8-bit pixels",
     "when": {"train.conditional": False}},
    {"model": "Glow", "dataset": "cifar10", "metric": "bpd_test", "value": 3.35,
     "source": "Kingma & Dhariwal 2018, Glow: Generative Flow with Invertible 1x1 "
               "Convolutions, Table 2", "url": "arxiv.org/abs/1807.03039",
     "note": "test NLL, bits/dim",
     "protocol": "uniform dequantization bound on the 10,000 CIFAR-10 test images, 8-bit pixels",
     "when": {"train.conditional": False}},
)

PHASES = ("model",)
PROGRESS_KEYS = ("bpd",)
TUNE_SPACE = {"lr": {"loguniform": [1e-4, 3e-3]}}
SWEEP_METRIC, SWEEP_MODE = "val_bpd", "min"
LIKELIHOOD = "bound"
LIKELIHOOD_NOTE = ("upper bound on -log P(x) of the 8-bit pixels: uniform dequantization, "
                   "k noise draws (importance-weighted)")
GRID_SIZE = 64    # one inverse pass draws the whole grid
TINY = {"hidden": 8, "couplings": 2}  # tests, --smoke: seconds on 2 cores
DDP_OPTIONS: dict[str, dict] = {}


# --- invertible layers: forward(h) -> (h, log|det| per image), inverse(h) -> h --------------

def squeeze(h: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels."""
    b, c, hh, ww = h.shape
    h = h.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return h.reshape(b, 4 * c, hh // 2, ww // 2)


def unsqueeze(h: torch.Tensor) -> torch.Tensor:
    b, c, hh, ww = h.shape
    h = h.view(b, c // 4, 2, 2, hh, ww).permute(0, 1, 4, 2, 5, 3)
    return h.reshape(b, c // 4, 2 * hh, 2 * ww)


class ActNorm(nn.Module):
    """h * exp(log_scale) + bias per channel, starting at the identity (no data-dependent init,
    so every DDP rank starts the same)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, h):
        logdet = self.log_scale.sum() * h.shape[2] * h.shape[3]
        return h * self.log_scale.exp() + self.bias, logdet.expand(h.shape[0])

    def inverse(self, h):
        return (h - self.bias) * torch.exp(-self.log_scale)


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution: a learned channel rotation, orthogonal at the start."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels))[0])

    def forward(self, h):
        logdet = torch.linalg.slogdet(self.weight)[1] * h.shape[2] * h.shape[3]
        return F.conv2d(h, self.weight[:, :, None, None]), logdet.expand(h.shape[0])

    def inverse(self, h):
        return F.conv2d(h, torch.linalg.inv(self.weight)[:, :, None, None])


class AffineCoupling(nn.Module):
    """One part of the input passes unchanged and sets the log-scale and shift of the other:
    a checkerboard of pixels (`checker`, parity picks which squares pass) or a channel half."""

    def __init__(self, channels: int, hidden: int, checker: bool, parity: int):
        super().__init__()
        self.checker, self.parity = checker, parity
        c_in = channels if checker else channels // 2
        c_out = channels if checker else channels - channels // 2
        last = nn.Conv2d(hidden, 2 * c_out, 3, padding=1)
        nn.init.zeros_(last.weight)   # the identity at the start
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)

    def _mask(self, h):
        rows = torch.arange(h.shape[2], device=h.device)[:, None]
        cols = torch.arange(h.shape[3], device=h.device)[None, :]
        return ((rows + cols + self.parity) % 2).to(h.dtype)   # 1 where the input passes

    def _scale_shift(self, cond_in):
        raw_s, t = self.net(cond_in).chunk(2, dim=1)
        return LOG_SCALE_BOUND * torch.tanh(raw_s / LOG_SCALE_BOUND), t

    def _halves(self, h):
        a, b = h[:, :h.shape[1] // 2], h[:, h.shape[1] // 2:]
        return (b, a) if self.parity else (a, b)   # (passes, transformed)

    def _join(self, passes, changed):
        return torch.cat([changed, passes] if self.parity else [passes, changed], dim=1)

    def forward(self, h):
        if self.checker:
            mask = self._mask(h)
            log_s, t = self._scale_shift(h * mask)
            log_s, t = log_s * (1 - mask), t * (1 - mask)
            return h * log_s.exp() + t, log_s.flatten(1).sum(1)
        passes, changed = self._halves(h)
        log_s, t = self._scale_shift(passes)
        return self._join(passes, changed * log_s.exp() + t), log_s.flatten(1).sum(1)

    def inverse(self, h):
        if self.checker:
            mask = self._mask(h)
            log_s, t = self._scale_shift(h * mask)
            return mask * h + (1 - mask) * (h - t) * torch.exp(-log_s)
        passes, changed = self._halves(h)
        log_s, t = self._scale_shift(passes)
        return self._join(passes, (changed - t) * torch.exp(-log_s))


def _stage(channels: int, cfg: Config, checker: bool) -> nn.ModuleList:
    steps = []
    for i in range(cfg.couplings):
        steps.append(ActNorm(channels))
        if cfg.invconv and not checker:
            steps.append(InvConv1x1(channels))
        steps.append(AffineCoupling(channels, cfg.hidden, checker, i % 2))
    return nn.ModuleList(steps)


class Flow(nn.Module):
    def __init__(self, cfg: Config, image_shape, num_classes: int):
        super().__init__()
        c, h, w = image_shape
        step = 2 ** cfg.scales
        if h % step or w % step:
            raise ValueError(f"flow.scales={cfg.scales} needs image height and width that are "
                             f"multiples of {step}, got {h}x{w}; lower flow.scales or set "
                             f"data.image_size to e.g. 32")
        self.image_shape = tuple(image_shape)   # what sample() draws
        self.num_classes = num_classes
        self.checker = nn.ModuleList()   # per scale, the last one included
        self.channel = nn.ModuleList()   # per scale but the last
        self.z_shapes = []               # the latents, in the order they are factored out
        for _ in range(cfg.scales):
            self.checker.append(_stage(c, cfg, checker=True))
            self.channel.append(_stage(4 * c, cfg, checker=False))
            h, w = h // 2, w // 2
            self.z_shapes.append((2 * c, h, w))
            c = 2 * c
        self.checker.append(_stage(c, cfg, checker=True))
        self.z_shapes.append((c, h, w))
        self.dims = math.prod(image_shape)
        if num_classes:   # per class: the mean and log-std of every latent dimension
            self.prior = nn.Embedding(num_classes, 2 * self.dims)
            nn.init.zeros_(self.prior.weight)

    # u in (0, 1)^D <-> z0 = probit(ALPHA + (1 - 2 ALPHA) u) <-> the multi-scale latents
    def to_latents(self, u: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Continuous images u (B, C, H, W) in [0, 1] -> latents, log|det du -> z| (B,)."""
        v = ALPHA + (1 - 2 * ALPHA) * u
        h = torch.special.ndtri(v)
        # dz0/du = (1 - 2a) / phi(z0): log|det| = D log(1 - 2a) - sum log phi(z0)
        logdet = (0.5 * h.pow(2) + HALF_LOG_2PI).flatten(1).sum(1) + \
            self.dims * math.log1p(-2 * ALPHA)
        zs = []
        for scale, checker in enumerate(self.checker):
            for layer in checker:
                h, ld = layer(h)
                logdet = logdet + ld
            if scale == len(self.channel):
                break
            h = squeeze(h)
            for layer in self.channel[scale]:
                h, ld = layer(h)
                logdet = logdet + ld
            half = h.shape[1] // 2
            zs.append(h[:, :half])
            h = h[:, half:]
        zs.append(h)
        return zs, logdet

    def from_latents(self, zs: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of to_latents: latents -> u in [0, 1]."""
        h = zs[-1]
        for scale in reversed(range(len(self.checker))):
            if scale < len(self.channel):
                h = torch.cat([zs[scale], h], dim=1)
                for layer in reversed(self.channel[scale]):
                    h = layer.inverse(h)
                h = unsqueeze(h)
            for layer in reversed(self.checker[scale]):
                h = layer.inverse(h)
        v = torch.special.ndtr(h)
        return ((v - ALPHA) / (1 - 2 * ALPHA)).clamp(0.0, 1.0)

    def prior_params(self, y, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, log_std), each (B, D), of the base Gaussian; None: the standard normal."""
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError("this flow is class-conditional: pass labels")
        return self.prior(y.to(device)).float().chunk(2, dim=1)

    def log_prior(self, zs, y) -> torch.Tensor:
        z = torch.cat([z.flatten(1) for z in zs], dim=1)
        params = self.prior_params(y, z.device)
        if params is not None:
            mean, log_std = params
            z = (z - mean) * torch.exp(-log_std)
            return -(0.5 * z.pow(2) + HALF_LOG_2PI + log_std).sum(1)
        return -(0.5 * z.pow(2) + HALF_LOG_2PI).sum(1)

    def log_density(self, u: torch.Tensor, y=None) -> torch.Tensor:
        """log p(u) in nats per image (B,) for continuous images u in [0, 1]."""
        zs, logdet = self.to_latents(u)
        return self.log_prior(zs, y) + logdet

    def forward(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """uint8 images (B, C, H, W) -> log p(x + U) - D log 256 (B,) nats, one uniform
        dequantization draw U: in expectation a lower bound on log P(x) of the 8-bit pixels."""
        with torch.autocast(x.device.type, enabled=False):
            u = (x.float() + torch.rand(x.shape, device=x.device)) / 256
            return self.log_density(u, y) - self.dims * math.log(256)


def dequantize_centre(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> the centre of each pixel's bin in [0, 1]: no noise (encode's input)."""
    return (x.float() + 0.5) / 256


def to_pixels(u: torch.Tensor) -> torch.Tensor:
    """u in [0, 1] -> the 8-bit level whose bin holds it."""
    return (u * 256).floor().clamp(0, 255).to(torch.uint8)


class ClippedAdam(torch.optim.Adam):
    """Adam that clips the global gradient norm first (DDP has averaged the gradients by then,
    so every rank clips alike): a flow's rare huge gradient otherwise wrecks its log-scales."""

    def __init__(self, params, lr: float, max_norm: float):
        super().__init__(params, lr=lr)
        self.max_norm = max_norm

    @torch.no_grad()
    def step(self, closure=None):
        if self.max_norm > 0:
            params = [p for group in self.param_groups for p in group["params"]
                      if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        return super().step(closure)


def build(cfg: Config, image_shape, num_classes: int) -> dict[str, nn.Module]:
    return {"model": Flow(cfg, image_shape, num_classes)}


def make_optimizers(cfg: Config, nets) -> dict[str, torch.optim.Optimizer]:
    return {"model": ClippedAdam(nets["model"].parameters(), cfg.lr, cfg.grad_clip)}


def loss(cfg: Config, nets, x: torch.Tensor, y, phase: str) -> dict[str, torch.Tensor]:
    nll_nats = -nets["model"](x, y)                       # (B,), one dequantization draw
    loss_value = nll_nats.mean() / x[0].numel()           # nats per sub-pixel
    return {"loss": loss_value, "bpd": loss_value.detach() / math.log(2)}


@torch.no_grad()
def nll(cfg: Config, nets, x: torch.Tensor, y=None, k: int = 1) -> torch.Tensor:
    """Upper bound on -log P(x) in nats per image (B,): -log mean_k p(u_k) + D log 256 over k
    dequantization draws u_k (the importance-weighted bound; k = 1 is the usual one, larger k is
    never looser in expectation)."""
    model = unwrap(nets["model"])
    logp = torch.stack([model(x, y) for _ in range(k)])   # (k, B)
    return -(torch.logsumexp(logp.double(), dim=0) - math.log(k)).float()


@torch.no_grad()
def sample(cfg: Config, nets, n: int, labels=None, device="cpu") -> torch.Tensor:
    """One inverse pass: z ~ N(mean, (temperature * std)^2) (the class's when conditional),
    then u = f^-1(z) and the 8-bit level of each u."""
    model = unwrap(nets["model"])
    with torch.autocast(torch.device(device).type, enabled=False):
        eps = torch.randn(n, model.dims, device=device) * cfg.temperature
        params = model.prior_params(labels, device)
        if params is not None:
            mean, log_std = params
            eps = mean + log_std.exp() * eps
        zs, start = [], 0
        for shape in model.z_shapes:
            size = math.prod(shape)
            zs.append(eps[:, start:start + size].reshape(n, *shape))
            start += size
        return to_pixels(model.from_latents(zs))


@torch.no_grad()
def encode(cfg: Config, nets, x: torch.Tensor, y=None) -> torch.Tensor:
    """The representation for the linear probe: every latent, the factored-out ones and the
    last, flattened and concatenated (B, D), of the bin centres (no noise). The map ignores
    the label, so a conditional flow encodes without one."""
    model = unwrap(nets["model"])
    with torch.autocast(x.device.type, enabled=False):
        zs, _ = model.to_latents(dequantize_centre(x))
    return torch.cat([z.flatten(1) for z in zs], dim=1)

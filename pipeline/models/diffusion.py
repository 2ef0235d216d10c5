"""DDPM (Ho et al. 2020): a fixed forward process q(x_t|x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
over t = 1..T, and a U-Net eps(x_t, t) trained on the simple loss E ||eps - eps(x_t, t)||^2 with t
uniform. Pixels are on [-1, 1]; the likelihood is the variational bound over 8-bit data.

The reverse step p(x_{t-1}|x_t) = N(mu(x_t, t), sigma_t^2 I) with mu from the predicted noise
and sigma_t^2 fixed: beta_t ("beta", Ho's CIFAR-10 model) or the posterior variance
beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) ("posterior").

Two samplers from the same network (Config.sampler): "ancestral", the T steps of p above, and
"ddim" (Song et al. 2021) on `sample_steps` evenly spaced timesteps with noise scale eta
(0: deterministic). With sample_steps = T and eta = 1 DDIM is the ancestral sampler with the
posterior variance. Both clip the predicted x_0 to [-1, 1] (Config.clip) and re-derive the noise
from the clipped x_0, so that identity holds with clipping too.

The bound in nats per image (Ho et al. 2020, eq. 5 and sec. 3.3), without clipping:
    L = L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T|x_0) || N(0, I))                          closed form, no noise
    L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t))          one draw of x_t each
    L_0     = -log p(x_0|x_1), a Gaussian N(mu(x_1, 1), beta~_2) integrated over each pixel's
              8-bit bin (edge bins take the tails), exactly as a probability: no density offset
The T terms after L_T are estimated from `nll_timesteps` timesteps per image drawn uniformly
without replacement and scaled by T / nll_timesteps (unbiased), or summed in full when
nll_timesteps >= T. eval's k (importance samples of other families) does not apply here.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.layers import to_float, to_uint8, unwrap

SCHEDULES = ("linear", "cosine")
VARIANCES = ("beta", "posterior")
SAMPLERS = ("ancestral", "ddim")


@dataclass(frozen=True)
class Config:
    # Sized for CPUs; the gpu and full presets widen it.
    width: int = 32            # channels at full resolution (x2 at every lower one)
    levels: int = 3            # resolutions: 28, 14, 7 for Fashion-MNIST
    blocks: int = 1            # residual blocks per resolution on the way down (one more up)
    attention: bool = True     # self-attention at the lowest resolution
    dropout: float = 0.0
    timesteps: int = 1000      # T
    schedule: str = "linear"   # beta_t: Ho et al. linear 1e-4..0.02 (scaled by 1000 / T), cosine
    variance: str = "beta"     # sigma_t^2 of the reverse process: beta_t or the posterior beta~_t
    sampler: str = "ddim"      # what sample() (FID, grids) runs: ancestral (T steps) or ddim
    sample_steps: int = 20     # DDIM timesteps
    eta: float = 0.0           # DDIM noise: 0 deterministic, 1 (with sample_steps = T) ancestral
    clip: bool = True          # clip the predicted x_0 to [-1, 1] while sampling
    nll_timesteps: int = 16    # timesteps per image of the bound's estimate (>= T: the full sum)
    lr: float = 5e-4

    def validate(self) -> None:
        for name in ("width", "levels", "blocks", "timesteps", "sample_steps", "nll_timesteps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"diffusion.{name} must be positive, got {getattr(self, name)}")
        if self.timesteps < 2:
            raise ValueError(f"diffusion.timesteps must be >= 2, got {self.timesteps}")
        for name, allowed in (("schedule", SCHEDULES), ("variance", VARIANCES),
                              ("sampler", SAMPLERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"diffusion.{name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.sample_steps > self.timesteps:
            raise ValueError(f"diffusion.sample_steps ({self.sample_steps}) must be <= "
                             f"diffusion.timesteps ({self.timesteps})")
        if self.eta < 0:
            raise ValueError(f"diffusion.eta must be >= 0, got {self.eta}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"diffusion.dropout must lie in [0, 1), got {self.dropout}")


# Published numbers on CIFAR-10 (Ho et al. 2020, Table 1, the L_simple model, which is the
# objective trained here): report/references.py shows them beside a run under the same protocol.
_HO = "Ho et al. 2020, Denoising Diffusion Probabilistic Models (NeurIPS), Table 1"
PUBLISHED = (
    {"model": "DDPM (L_simple)", "dataset": "cifar10", "metric": "bpd_test", "value": 3.75,
     "source": _HO, "url": "arxiv.org/abs/2006.11239",
     "note": "variational bound, bits/dim (train 3.72); trained on the true bound L instead: 3.70",
     "protocol": "negative variational bound with the discretized decoder on the 10,000 CIFAR-10 "
                 "test images, 8-bit pixels, T = 1000",
     "when": {"train.conditional": False}},
    {"model": "DDPM (L_simple)", "dataset": "cifar10", "metric": "fid_inception", "value": 3.17,
     "source": _HO, "url": "arxiv.org/abs/2006.11239", "n_fake": 50000, "n_real": 50000,
     "reference_split": "train",
     "note": "ancestral sampling, T = 1000; against the test split the paper gives 5.24",
     "protocol": "FID of 50,000 samples against the 50,000 training images, InceptionV3 pool3, "
                 "1000 ancestral steps",
     "when": {"train.conditional": False, "sampler": "ancestral"}},
)

PHASES = ("model",)
PROGRESS_KEYS = ("mse",)
TUNE_SPACE = {"lr": {"loguniform": [1e-4, 2e-3]}}
SWEEP_METRIC, SWEEP_MODE = "val_mse", "min"   # the simple loss on the validation split
LIKELIHOOD = "bound"
LIKELIHOOD_NOTE = ("variational bound on -log p(x) (Ho et al. 2020: L_T + KL terms + discretized "
                   "Gaussian L_0), sum over t estimated from diffusion.nll_timesteps uniform "
                   "timesteps per image (the full sum when >= T); eval's k is not used")
GRID_SIZE = 36   # sample_steps (DDIM) or T (ancestral) network passes per grid
TINY = {"width": 8, "levels": 2, "attention": False, "timesteps": 20, "sample_steps": 5,
        "nll_timesteps": 4}  # tests, --smoke: seconds on 2 cores
DDP_OPTIONS: dict[str, dict] = {}


# --- the fixed forward process ------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """float64 tensors indexed by t = 0..T (index 0: abar_0 = 1, no noise)."""
    beta: torch.Tensor
    alpha: torch.Tensor
    abar: torch.Tensor
    posterior_var: torch.Tensor   # beta~_t (0 at t = 1)
    sigma2: torch.Tensor          # the reverse process's variance; at t = 1 the decoder's beta~_2
    coef_x0: torch.Tensor         # posterior mean = coef_x0 x_0 + coef_xt x_t
    coef_xt: torch.Tensor

    def at(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps -> (B, 1, 1, 1) float64 values."""
        return getattr(self, name)[t].view(-1, 1, 1, 1)


def betas(kind: str, T: int) -> torch.Tensor:
    """beta_1..beta_T, float64. Linear: Ho et al.'s 1e-4..0.02 for T = 1000, scaled by 1000 / T
    so a shorter chain reaches the same abar_T (Nichol & Dhariwal 2021); cosine: their
    abar_t = cos^2((t/T + s) / (1 + s) pi/2), s = 0.008. Capped at 0.999."""
    if kind == "linear":
        scale = 1000 / T
        out = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    else:
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        out = 1 - abar[1:] / abar[:-1]
    return out.clamp(max=0.999)


@functools.lru_cache(maxsize=16)
def schedule(kind: str, T: int, variance: str, device: str = "cpu") -> Schedule:
    beta = torch.cat([torch.zeros(1, dtype=torch.float64), betas(kind, T)])
    alpha = 1 - beta
    abar = torch.cumprod(alpha, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    posterior_var = beta * (1 - abar_prev) / (1 - abar).clamp(min=1e-20)
    posterior_var[0] = 0.0
    sigma2 = (beta if variance == "beta" else posterior_var).clone()
    sigma2[1] = posterior_var[2]   # as Ho et al.'s code: the decoder's variance is beta~_2
    coef_x0 = beta * abar_prev.sqrt() / (1 - abar).clamp(min=1e-20)
    coef_xt = (1 - abar_prev) * alpha.sqrt() / (1 - abar).clamp(min=1e-20)
    tensors = [v.to(device) for v in (beta, alpha, abar, posterior_var, sigma2, coef_x0, coef_xt)]
    return Schedule(*tensors)


def schedule_of(cfg: Config, device) -> Schedule:
    return schedule(cfg.schedule, cfg.timesteps, cfg.variance, str(torch.device(device)))


def q_sample(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """x_t ~ q(x_t|x_0) in closed form, for per-image timesteps t (B,)."""
    abar = sched.at("abar", t).to(x0.dtype)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


# --- the network ----------------------------------------------------------------------------

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps (Vaswani et al. 2017), (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / max(half, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim - 2 * half))


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with groups of >= 4 channels where possible, at most 32 groups."""
    return nn.GroupNorm(math.gcd(channels // 4, 32) if channels >= 4 else 1, channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, emb=None):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # (B, HW, C)
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(a.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """eps(x_t, t[, y]): levels resolutions, each halving H and W; channels width * (1, 2, 2,
    ...); the class embedding (conditional) is added to the time embedding."""

    def __init__(self, cfg: Config, image_shape, num_classes: int):
        super().__init__()
        c, h, w = image_shape
        factor = 2 ** (cfg.levels - 1)
        if h % factor or w % factor:
            raise ValueError(f"diffusion.levels={cfg.levels} halves the image {cfg.levels - 1} "
                             f"times: height and width must be multiples of {factor}, got "
                             f"{h}x{w}; lower diffusion.levels or set data.image_size")
        self.image_shape = tuple(image_shape)   # what sample() draws
        self.num_classes = num_classes
        width, emb_dim = cfg.width, 4 * cfg.width
        self.width = width
        self.time = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(),
                                  nn.Linear(emb_dim, emb_dim))
        self.label = nn.Embedding(num_classes, emb_dim) if num_classes else None
        chans = [width * min(2 ** level, 2) for level in range(cfg.levels)]
        self.conv_in = nn.Conv2d(c, width, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [width], width
        for level, out in enumerate(chans):
            for _ in range(cfg.blocks):
                self.down.append(ResBlock(ch, out, emb_dim, cfg.dropout))
                ch = out
                skips.append(ch)
            if level < cfg.levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout)]
                                 + ([Attention(ch)] if cfg.attention else [])
                                 + [ResBlock(ch, ch, emb_dim, cfg.dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(cfg.levels)):
            for _ in range(cfg.blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), chans[level], emb_dim, cfg.dropout))
                ch = chans[level]
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.norm_out = norm(ch)
        self.conv_out = nn.Conv2d(ch, c, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)   # starts at eps = 0: the loss starts at 1
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.width))
        if self.label is not None:
            if y is None:
                raise ValueError("a conditional diffusion model needs labels y")
            emb = emb + self.label(y)
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def build(cfg: Config, image_shape, num_classes: int) -> dict[str, nn.Module]:
    return {"model": UNet(cfg, image_shape, num_classes)}


def make_optimizers(cfg: Config, nets) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(nets["model"].parameters(), lr=cfg.lr)}


# --- training -------------------------------------------------------------------------------

def loss(cfg: Config, nets, x: torch.Tensor, y, phase: str) -> dict[str, torch.Tensor]:
    """Ho et al.'s L_simple: the mean squared error of the predicted noise, t uniform on 1..T."""
    sched = schedule_of(cfg, x.device)
    x0 = to_float(x)
    t = torch.randint(1, cfg.timesteps + 1, (len(x),), device=x.device)
    noise = torch.randn_like(x0)
    xt = q_sample(sched, x0.double(), t, noise.double()).float()
    mse = (nets["model"](xt, t, y).float() - noise).pow(2).mean()
    return {"loss": mse, "mse": mse.detach()}


# --- the bound ------------------------------------------------------------------------------

def discretized_gaussian_logp(x: torch.Tensor, mean: torch.Tensor,
                              log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per sub-pixel (float64) for x uint8, under N(mean, exp(log_scale)^2) on [-1, 1]
    binned into 256 levels of width 2/255, the edge bins taking the tails (Ho et al. 2020, eq.
    13). Differences of normal CDFs are taken in the lower tail (log_ndtr), so a far-off mean
    costs its true log-probability rather than a clamp."""
    xf = to_float(x).double()
    mean, inv_s = mean.double(), torch.exp(-log_scale.double())
    lo = (xf - 1 / 255 - mean) * inv_s
    hi = (xf + 1 / 255 - mean) * inv_s
    upper = lo > 0                                  # the bin lies above the mean: mirror it
    a, b = torch.where(upper, -hi, lo), torch.where(upper, -lo, hi)   # a < b, a <= 0
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    inner = log_b + torch.log(-torch.expm1((log_a - log_b).clamp(max=-1e-300)))
    bottom = torch.special.log_ndtr(hi)             # x = 0: (-inf, -1 + 1/255]
    top = torch.special.log_ndtr(-lo)               # x = 255: [1 - 1/255, inf)
    return torch.where(x == 0, bottom, torch.where(x == 255, top, inner))


def prior_term(cfg: Config, x: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T|x_0) || N(0, I)) in nats per image (B,), float64."""
    sched = schedule_of(cfg, x.device)
    x0 = to_float(x).double()
    abar = sched.abar[-1]
    kl = 0.5 * (abar * x0.pow(2) + (1 - abar) - 1 - torch.log(1 - abar))
    return kl.flatten(1).sum(1)


def vlb_term(cfg: Config, nets, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             y=None) -> torch.Tensor:
    """The bound's term at timestep t (B,), nats per image (B,) float64, for the given draw of
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise: L_0 = -log p(x_0|x_1) where t = 1, else
    L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t))."""
    model = unwrap(nets["model"])
    sched = schedule_of(cfg, x.device)
    x0 = to_float(x).double()
    xt = q_sample(sched, x0, t, noise.double())
    eps = model(xt.float(), t, y).double()
    # mu(x_t, t) = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)
    mean_p = (xt - sched.at("beta", t) / (1 - sched.at("abar", t)).sqrt() * eps) \
        / sched.at("alpha", t).sqrt()
    sigma2 = sched.at("sigma2", t)
    first = (t == 1).view(-1, 1, 1, 1)
    # KL of two Gaussians with diagonal, per-step constant variances
    mean_q = sched.at("coef_x0", t) * x0 + sched.at("coef_xt", t) * xt
    post = torch.where(first, torch.ones_like(sigma2), sched.at("posterior_var", t))
    kl = 0.5 * (torch.log(sigma2 / post) + post / sigma2 - 1 + (mean_q - mean_p).pow(2) / sigma2)
    decoder = -discretized_gaussian_logp(x, mean_p, 0.5 * torch.log(sigma2))
    return torch.where(first, decoder, kl).flatten(1).sum(1)


@torch.no_grad()
def nll(cfg: Config, nets, x: torch.Tensor, y=None, k: int = 1) -> torch.Tensor:
    """-log p(x) <= L in nats per image (B,): L_T plus an unbiased estimate of the other T terms
    from cfg.nll_timesteps timesteps per image, drawn without replacement (the full sum, t =
    1..T in order, when nll_timesteps >= T). Every draw comes from the global generator in an
    order that does not depend on y, so the classes of eval's Bayes rule, which reseed before
    each class, see the same timesteps and noise. k is not used (see the module docstring)."""
    T, m = cfg.timesteps, min(cfg.nll_timesteps, cfg.timesteps)
    total = prior_term(cfg, x)
    if m == T:
        steps = torch.arange(1, T + 1, device=x.device)[:, None].expand(T, len(x))
    else:
        steps = torch.rand(len(x), T, device=x.device).argsort(dim=1)[:, :m].T + 1   # (m, B)
    for t in steps:
        noise = torch.randn(x.shape, device=x.device)
        total = total + vlb_term(cfg, nets, x, t.contiguous(), noise, y) * (T / m)
    return total.float()


# --- sampling -------------------------------------------------------------------------------

def _predict_x0(cfg: Config, sched: Schedule, xt, t, eps):
    abar = sched.at("abar", t).float()
    x0 = (xt - (1 - abar).sqrt() * eps) / abar.sqrt()
    return x0.clamp(-1, 1) if cfg.clip else x0


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """`steps` timesteps evenly spaced over 1..T, descending (all of them when steps = T)."""
    return sorted({round(v) for v in torch.linspace(1, T, steps).tolist()}, reverse=True)


@torch.no_grad()
def sample(cfg: Config, nets, n: int, labels=None, device="cpu") -> torch.Tensor:
    """n images from N(0, I) through cfg.sampler: ancestral (T network passes) or DDIM
    (sample_steps passes). Draws from the global generator: the same seed, the same images."""
    model = unwrap(nets["model"])
    x = torch.randn(n, *model.image_shape, device=device)
    run = _ancestral if cfg.sampler == "ancestral" else _ddim
    return to_uint8(run(cfg, model, schedule_of(cfg, device), x, labels))


def _ancestral(cfg: Config, model, sched: Schedule, x: torch.Tensor, labels) -> torch.Tensor:
    """x_{t-1} = posterior mean(x_t, x_0 predicted) + sigma_t z for t = T..1 (no noise at 1)."""
    for step in range(cfg.timesteps, 0, -1):
        t = torch.full((len(x),), step, device=x.device, dtype=torch.long)
        x0 = _predict_x0(cfg, sched, x, t, model(x, t, labels).float())
        x = sched.at("coef_x0", t).float() * x0 + sched.at("coef_xt", t).float() * x
        if step > 1:
            x = x + sched.at("sigma2", t).float().sqrt() * torch.randn_like(x)
    return x


def _ddim(cfg: Config, model, sched: Schedule, x: torch.Tensor, labels) -> torch.Tensor:
    """Song et al. 2021, eq. 12: x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma^2)
    eps + sigma z, sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))."""
    steps = ddim_timesteps(cfg.timesteps, cfg.sample_steps)
    for i, step in enumerate(steps):
        prev = steps[i + 1] if i + 1 < len(steps) else 0
        t = torch.full((len(x),), step, device=x.device, dtype=torch.long)
        x0 = _predict_x0(cfg, sched, x, t, model(x, t, labels).float())
        abar, abar_prev = sched.abar[step], sched.abar[prev]
        eps = (x - abar.sqrt().float() * x0) / (1 - abar).sqrt().float()   # of the clipped x_0
        sigma = cfg.eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        direction = (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt().float()
        x = abar_prev.sqrt().float() * x0 + direction * eps
        if cfg.eta > 0 and prev > 0:
            x = x + sigma.float() * torch.randn_like(x)
    return x

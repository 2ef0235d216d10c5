"""Decoder-only Transformer over the raster sequence of sub-pixels (an autoregressive model like
the PixelCNN, built from attention instead of masked convolutions): p(x) = prod_t p(x_t | x_<t)
with t running over pixels in raster order and, within a pixel, over channels (R, G, B), so the
sequence is C*H*W tokens long (784 for 28x28 grey, 3072 for 32x32 colour).

Input token t is sub-pixel t-1 (a learned start token first, or the class embedding as the start
token when conditional), plus a learned position embedding; pre-LayerNorm blocks with causal
self-attention; a 256-way softmax per sub-pixel, so the NLL is exact. Sampling keeps a key/value
cache, so each of the C*H*W steps costs one token's work; sample_reference (no cache) is the slow
reference that reruns the whole prefix and must give the same samples for a seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.layers import unwrap


@dataclass(frozen=True)
class Config:
    # Sized for CPUs: attention over 784 tokens dominates; widen it on GPUs (--set).
    d_model: int = 64
    layers: int = 3
    heads: int = 4
    mlp_ratio: int = 4       # hidden width of each block's MLP = mlp_ratio * d_model
    dropout: float = 0.0
    lr: float = 1e-3

    def validate(self) -> None:
        for name in ("d_model", "layers", "heads", "mlp_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"transformer.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ValueError(f"transformer.d_model ({self.d_model}) must be a multiple of "
                             f"transformer.heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"transformer.dropout must lie in [0, 1), got {self.dropout}")


PHASES = ("model",)
PROGRESS_KEYS = ("bpd",)
TUNE_SPACE = {"lr": {"loguniform": [1e-4, 3e-3]}}
SWEEP_METRIC, SWEEP_MODE = "val_bpd", "min"
LIKELIHOOD = "exact"
LIKELIHOOD_NOTE = "exact: autoregressive Transformer, 256-way softmax per sub-pixel"
GRID_SIZE = 16   # C*H*W sampling steps per grid, even with the cache
TINY = {"d_model": 16, "layers": 2, "heads": 2, "mlp_ratio": 2}  # tests, --smoke
DDP_OPTIONS: dict[str, dict] = {}
# Published numbers the report shows beside ours, only under the same protocol (test NLL on
# CIFAR-10, 8-bit pixels, 256-way softmax); a sparse-attention Transformer, 59M parameters.
PUBLISHED = (
    {"model": "Sparse Transformer", "dataset": "cifar10", "metric": "bpd_test", "value": 2.80,
     "source": "Child et al. 2019, Generating Long Sequences with Sparse Transformers, Table 2",
     "url": "arxiv.org/abs/1904.10509", "note": "test NLL, bits/dim",
     "protocol": "exact NLL on the 10,000 CIFAR-10 test images, 8-bit pixels",
     "when": {"train.conditional": False}},
)


def to_sequence(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W*C): pixels in raster order, channels within a pixel."""
    return x.permute(0, 2, 3, 1).flatten(1)


def from_sequence(seq: torch.Tensor, image_shape) -> torch.Tensor:
    """(B, H*W*C) -> (B, C, H, W), the inverse of to_sequence."""
    c, h, w = image_shape
    return seq.view(-1, h, w, c).permute(0, 3, 1, 2)


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer: (B, heads, L, d_head)
    buffers filled one step at a time."""

    def __init__(self, max_len: int):
        self.max_len, self.len, self.k, self.v = max_len, 0, None, None

    def append(self, k: torch.Tensor, v: torch.Tensor):
        if self.k is None:
            shape = (*k.shape[:2], self.max_len, k.shape[3])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        end = self.len + k.shape[2]
        self.k[:, :, self.len:end], self.v[:, :, self.len:end] = k, v
        self.len = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, h: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(h).split(d, dim=2))                  # (B, heads, T, dh)
        if cache is None:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:  # new tokens after the cached ones: attend to all of them (one token: no mask)
            assert t == 1, "the cached path takes one token per step"
            k, v = cache.append(k, v)
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h, cache=None):
        h = h + self.drop(self.attn(self.ln1(h), cache))
        return h + self.drop(self.mlp(self.ln2(h)))


class PixelTransformer(nn.Module):
    def __init__(self, cfg: Config, image_shape, num_classes: int):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.seq_len = math.prod(self.image_shape)
        self.num_classes = num_classes
        d = cfg.d_model
        self.tok = nn.Embedding(256, d)
        self.pos = nn.Embedding(self.seq_len, d)
        # Only the start vector that is used exists, so DDP finds no unused parameters.
        if num_classes:
            self.class_emb = nn.Embedding(num_classes, d)
        else:
            self.start = nn.Parameter(torch.zeros(d))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, 256)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:  # GPT-2's: small embeddings, so positions don't drown tokens
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def start_token(self, y: torch.Tensor | None, b: int) -> torch.Tensor:
        """(B, 1, d): the class embedding when conditional, else the learned start vector."""
        if self.num_classes:
            if y is None:
                raise ValueError("this transformer is class-conditional: pass labels")
            return self.class_emb(y)[:, None]
        return self.start.expand(b, 1, -1)

    def from_embeddings(self, e_prev: torch.Tensor, y=None) -> torch.Tensor:
        """Embedded sub-pixels x_0..x_{T-2} (B, T-1, d) -> logits (B, T, 256) for x_0..x_{T-1}.
        Split from forward so a test can take gradients with respect to the inputs."""
        h = torch.cat([self.start_token(y, e_prev.shape[0]).to(e_prev.dtype), e_prev], dim=1)
        h = self.drop(h + self.pos.weight[:h.shape[1]])                 # (B, T, d)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))

    def forward(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """uint8 (B, C, H, W) -> logits (B, L, 256) in sequence order (to_sequence)."""
        return self.from_embeddings(self.tok(to_sequence(x)[:, :-1].long()), y)

    def step(self, h: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """One new input token (B, 1, d), position included -> logits (B, 256) for the next
        sub-pixel; keys and values of earlier tokens come from the caches."""
        for block, cache in zip(self.blocks, caches):
            h = block(h, cache)
        return self.head(self.ln_f(h))[:, 0]


def build(cfg: Config, image_shape, num_classes: int) -> dict[str, nn.Module]:
    return {"model": PixelTransformer(cfg, image_shape, num_classes)}


def make_optimizers(cfg: Config, nets) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(nets["model"].parameters(), lr=cfg.lr)}


def _nll_per_image(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """logits (B, L, 256), x uint8 (B, C, H, W) -> nats per image (B,)."""
    return F.cross_entropy(logits.float().transpose(1, 2), to_sequence(x).long(),
                           reduction="none").sum(1)


def loss(cfg: Config, nets, x: torch.Tensor, y, phase: str) -> dict[str, torch.Tensor]:
    nll_nats = _nll_per_image(nets["model"](x, y), x)
    loss_value = nll_nats.mean() / x[0].numel()                         # nats per sub-pixel
    return {"loss": loss_value, "bpd": loss_value.detach() / math.log(2)}


@torch.no_grad()
def nll(cfg: Config, nets, x: torch.Tensor, y=None, k: int = 1) -> torch.Tensor:
    """Exact -log p(x) in nats per image (B,); k is ignored (no latent to sample)."""
    return _nll_per_image(unwrap(nets["model"])(x, y), x)


def _draw(logits: torch.Tensor) -> torch.Tensor:
    """(n, 256) logits -> (n,) levels; both sampling paths draw through here, so a seed gives
    the same random numbers to each."""
    return torch.multinomial(F.softmax(logits.float(), dim=-1), 1).squeeze(1)


@torch.no_grad()
def sample(cfg: Config, nets, n: int, labels=None, device="cpu", progress=None,
           use_cache: bool = True) -> torch.Tensor:
    """Ancestral sampling, one sub-pixel per step -> uint8 (n, C, H, W). With the cache a step
    runs one token through the blocks; without it, the whole prefix (the reference).
    progress, if given, is called with 1 after each pixel position."""
    model = unwrap(nets["model"])
    c = model.image_shape[0]
    y = labels.to(device) if labels is not None else None
    seq = torch.zeros(n, model.seq_len, dtype=torch.long, device=device)
    caches = [KVCache(model.seq_len) for _ in model.blocks]
    for t in range(model.seq_len):
        if use_cache:
            h = model.start_token(y, n) if t == 0 else model.tok(seq[:, t - 1:t])
            logits = model.step(h + model.pos.weight[t], caches)
        else:
            logits = model.from_embeddings(model.tok(seq[:, :t]), y)[:, -1]
        seq[:, t] = _draw(logits)
        if progress is not None and (t + 1) % c == 0:
            progress(1)
    return from_sequence(seq, model.image_shape).to(torch.uint8)


def sample_reference(cfg: Config, nets, n: int, labels=None, device="cpu",
                     progress=None) -> torch.Tensor:
    """The slow reference for sample(), as pixelcnn names it: the whole prefix at every step."""
    return sample(cfg, nets, n, labels, device, progress, use_cache=False)

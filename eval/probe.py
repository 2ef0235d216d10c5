"""Linear-probe accuracy of a frozen encoder ("keep the encoder"): multinomial logistic
regression on z (the VAE's posterior mean), fitted on the train split, scored on the test split.
A better encoder makes the classes more linearly separable in z."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from eval.progress import bar
from pipeline.data import ImageData
from pipeline.models import FAMILIES


@torch.no_grad()
def encode_all(cfg, nets, data: ImageData, batch_size: int = 1000, device="cpu",
               quiet: bool = True) -> torch.Tensor:
    """float32 (N, latent_dim) codes of every image (unconditional encoders only)."""
    family = FAMILIES[cfg.model]
    for net in nets.values():
        net.eval()
    parts = []
    with bar(len(data), "encoding", "img", quiet) as progress:
        for start in range(0, len(data), batch_size):
            x = data.images[start:start + batch_size].to(device)
            parts.append(family.encode(cfg.family, nets, x, None).float().cpu())
            progress.update(len(x))
    return torch.cat(parts)


def fit_logistic(z: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-4,
                 max_iter: int = 200) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """Full-batch L-BFGS on standardized z; returns (layer, mean, std) to apply to new z."""
    mean, std = z.mean(0), z.std(0).clamp(min=1e-6)
    zs = ((z - mean) / std).double()
    torch.manual_seed(0)
    layer = torch.nn.Linear(z.shape[1], num_classes).double()
    opt = torch.optim.LBFGS(layer.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(layer(zs), y) + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return layer, mean, std


@torch.no_grad()
def probe_accuracy(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor,
                   y_test: torch.Tensor, num_classes: int) -> float:
    layer, mean, std = fit_logistic(z_train, y_train, num_classes)
    pred = layer(((z_test - mean) / std).double()).argmax(1)
    return (pred == y_test).double().mean().item()

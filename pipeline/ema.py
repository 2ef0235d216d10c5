"""Exponential moving averages (EMA) of network weights, kept beside the trained weights.

Which nets keep one, and with what decay: the family's EMA attribute and train.ema_decay
(pipeline.models.ema_decays; e.g. the GAN's generator at 0.999). After each training step
(every phase's optimizer has stepped) each average moves towards its net's weights:

    avg = d * avg + (1 - d) * w,   d = min(decay, (1 + n) / (10 + n))   after n earlier updates

The warm-up of d is TensorFlow's ExponentialMovingAverage(num_updates): without it a short run's
average would still be mostly the random initial weights. Floating-point buffers (BatchNorm's
running statistics) are averaged the same way, so they fit the averaged weights; other buffers
(BatchNorm's batch counter) are copied.

Under DDP every rank holds the same weights, so only rank 0 keeps the averages (it writes the
checkpoints and the sample grids); they are read from the unwrapped module. The checkpoint keeps
them under "ema" (state_dict() below); evaluation and sampling load them in place of the trained
weights of those nets (pipeline.checkpoint.sampling_weights).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline.models import FAMILIES, ema_decays
from pipeline.models.layers import unwrap

WARMUP = 10  # d = (1 + n) / (WARMUP + n) until that reaches the configured decay


def decays_for(cfg, nets: dict) -> dict[str, float]:
    """{net name: decay} of this run's averaged nets ({} when none)."""
    return ema_decays(FAMILIES[cfg.model], list(nets), cfg.train.ema_decay)


class WeightAverage:
    """The averaged copies of some of a model's nets: `nets` ({name: nn.Module}, in eval mode,
    without gradients) holds them, ready to sample from."""

    def __init__(self, nets: dict, decays: dict[str, float]):
        unknown = sorted(set(decays) - set(nets))
        if unknown:
            raise ValueError(f"EMA names nets {unknown} that the model does not have "
                             f"({sorted(nets)})")
        self.decays = dict(decays)
        self.updates = 0
        self._live = {name: unwrap(nets[name]) for name in decays}
        self.nets: dict[str, nn.Module] = {
            name: copy.deepcopy(live).eval().requires_grad_(False)
            for name, live in self._live.items()}
        # The tensors stay the same objects (optimizers and load_state_dict work in place)
        self._tensors = {name: self._pairs(name) for name in self.nets}

    @classmethod
    def for_run(cls, cfg, nets: dict) -> "WeightAverage | None":
        decays = decays_for(cfg, nets)
        return cls(nets, decays) if decays else None

    def _pairs(self, name: str):
        """(averaged, live) float tensors, and (averaged, live) tensors to copy; a tensor
        shared by two modules (tied weights) once."""
        def tensors(net):
            return [t.data for t in (*net.parameters(), *net.buffers())]
        pairs = list(zip(tensors(self.nets[name]), tensors(self._live[name]), strict=True))
        return ([(a, w) for a, w in pairs if a.is_floating_point()],
                [(a, w) for a, w in pairs if not a.is_floating_point()])

    def decay(self, name: str) -> float:
        """This update's d for the net (the warm-up, capped by the configured decay)."""
        return min(self.decays[name], (1 + self.updates) / (WARMUP + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move every average one step towards its net's current weights."""
        for name in self.nets:
            floats, others = self._tensors[name]
            if floats:
                avg, live = zip(*floats)
                torch._foreach_lerp_(list(avg), list(live), 1.0 - self.decay(name))
            for a, w in others:
                a.copy_(w)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decays": dict(self.decays), "updates": self.updates,
                "nets": {name: net.state_dict() for name, net in self.nets.items()}}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore from a checkpoint's "ema"; without one (a checkpoint from before the EMA,
        or of a run that kept none) every average starts from the restored weights."""
        saved = (state or {}).get("nets", {})
        for name, net in self.nets.items():
            net.load_state_dict(saved[name] if name in saved else self._live[name].state_dict())
        self.updates = int((state or {}).get("updates", 0)) if saved else 0

    def describe(self) -> str:
        return describe(self.state_dict())


def describe(state: dict | None) -> str:
    """One line for stamps and messages: "generator (decay 0.999, 30 updates)", or "none"."""
    if not state or not state.get("nets"):
        return "none"
    decays = state.get("decays", {})
    return ", ".join(f"{name} (decay {decays.get(name, '?')}, {state.get('updates', '?')} "
                     f"updates)" for name in sorted(state["nets"]))

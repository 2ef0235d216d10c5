"""What a metric's compute gets: the loaded model, the options, and where its results go.

One EvalContext per `genbench eval`. A compute reads ctx.model, ctx.opts, ctx.device and
ctx.train (the train split, loaded on first use), and writes its numbers to ctx.metrics, its
protocol to ctx.stamp(...), sentences to ctx.notes, and PNGs to ctx.figures; eval/run.py logs
them all as one evaluation record. ctx.shared lets metrics that share work (a classifier, the
samples) reuse it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipeline import schema
from pipeline.data import ImageData, load_config_split


def subset(data: ImageData, n: int, seed: int) -> ImageData:
    """n images of data: all of it in order when n covers it, else a seeded random subset."""
    if n >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return ImageData(data.images[idx], data.labels[idx], data.num_classes)


@dataclass
class EvalContext:
    opts: object                 # eval.run.EvalOptions
    model: object                # eval.load.LoadedModel
    device: torch.device
    nll_runner: object = None    # the CLI's Ray runner for --workers > 1
    metrics: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)        # the protocol stamps (eval.*)
    notes: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)     # file name -> PNG bytes
    record: dict = field(default_factory=dict)      # more for eval.json
    shared: dict = field(default_factory=dict)
    fake: torch.Tensor | None = None                # samples, for the logged grid
    _train: ImageData | None = None

    @property
    def family(self):
        from pipeline.models import FAMILIES
        return FAMILIES[self.model.cfg.model]

    @property
    def test(self) -> ImageData:
        return self.model.test

    @property
    def train(self) -> ImageData:
        if self._train is None:
            self._train = load_config_split(self.model.cfg.data, "train")
        return self._train

    def stamp(self, metric: str, name: str | None = None, value=None) -> None:
        """ctx.stamp("bpd", "k", 16) -> eval.bpd.k = "16"; ctx.stamp("bpd", value=...) ->
        eval.bpd."""
        key = schema.eval_tag(metric, name) if name else schema.eval_tag(metric)
        self.tags[key] = str(value)

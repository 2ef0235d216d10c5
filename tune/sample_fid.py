"""The sweep metric of families without a validation loss (SWEEP_METRIC None) that can sample,
e.g. a GAN: FID on the domain classifier's features (eval/extractors.py) between n samples of
the model and as many validation images. Small and cheap, so it runs at every report;
comparable within one sweep (same extractor, same real set, same noise), never with
`genbench eval`'s full-size fid_domain."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from pipeline.checkpoint import sampling_weights
from pipeline.config import Config
from pipeline.data import ImageData
from pipeline.models import FAMILIES

FID_METRIC = "val_fid_domain"  # small-sample FID on domain-classifier features, vs the val split
NOISE_SEED = 1234  # the same latent draws at every report and in every trial


def prepare_extractor(cfg: Config) -> dict:
    """Driver side: train and cache the dataset's domain classifier once if it is missing;
    returns where the cache is, for trials whose Ray workers may not see GENBENCH_CACHE."""
    from eval.domain_classifier import cache_dir
    from eval.extractors import domain_extractor
    d = cfg.data
    domain_extractor(d.dataset, d.root, d.image_size, "cpu", train_if_missing=True, quiet=False)
    return {"domain_cache": str(cache_dir())}


@contextmanager
def _cache_env(path: str | None):
    old = os.environ.get("GENBENCH_CACHE")
    if path:
        os.environ["GENBENCH_CACHE"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GENBENCH_CACHE", None)
        else:
            os.environ["GENBENCH_CACHE"] = old


class SmallSampleFID:
    """payload (a checkpoint of the trial) -> {FID_METRIC: value}."""

    def __init__(self, cfg: Config, val: ImageData, device, n: int, cache: str | None = None):
        from eval.extractors import domain_extractor
        from eval.fidelity import extract_features

        d = cfg.data
        self.cfg, self.device = cfg, device
        with _cache_env(cache):
            self.extractor = domain_extractor(d.dataset, d.root, d.image_size, device,
                                              train_if_missing=False, quiet=True)
        self.layer = self.extractor.layers["fid"]
        n = min(n, len(val))
        idx = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:n]
        self.real = extract_features(self.extractor, val.images[idx], quiet=True)[self.layer]
        self.labels = val.labels[idx].to(device) if cfg.train.conditional else None
        self.n, self.image_shape = n, val.image_shape
        self.num_classes = val.num_classes if cfg.train.conditional else 0

    @torch.no_grad()
    def __call__(self, payload: dict) -> dict[str, float]:
        from eval.fidelity import extract_features, fid

        family = FAMILIES[self.cfg.model]
        nets = family.build(self.cfg.family, self.image_shape, self.num_classes)
        weights = sampling_weights(payload)  # the EMA weights of the nets that keep one
        for name, net in nets.items():
            net.to(self.device).load_state_dict(weights[name])
            net.eval()  # BatchNorm on running statistics, as the loop's sample grids
        cuda = [self.device] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # leave the training loop's RNG untouched
            torch.manual_seed(NOISE_SEED)
            fake = family.sample(self.cfg.family, nets, self.n, self.labels, device=self.device)
        features = extract_features(self.extractor, fake.cpu(), quiet=True)[self.layer]
        return {FID_METRIC: fid(features, self.real)}

"""Sample-quality metrics from features: FID, Inception Score, KID, precision/recall, and
density/coverage (eval/density_coverage.py, on the FID features).

Features come from an Extractor (eval/extractors.py) run here in batches with a progress bar;
the metrics are torch-fidelity's own feature-level functions, so numbers match its
`calculate_metrics` on the same images. Metric names carry the extractor (fid_domain,
fid_inception): numbers from different extractors are never comparable.
"""
from __future__ import annotations

import torch
from torch_fidelity.metric_fid import (KEY_METRIC_FID, fid_features_to_statistics,
                                       fid_statistics_to_metric)
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import (KEY_METRIC_PRECISION, KEY_METRIC_RECALL,
                                       prc_features_to_metric)

from eval.density_coverage import density_coverage
from eval.domain_classifier import to_rgb_uint8
from eval.extractors import Extractor
from eval.progress import bar
from pipeline import schema
from pipeline.errors import ConfigError

FIDELITY_METRICS = ("fid", "is", "kid", "prc", "dc")
TF_METRIC = {"fid": "fid", "is": "isc", "kid": "kid", "prc": "prc"}  # our name -> torch-fidelity's
# torch-fidelity's defaults, so a number here equals its CLI's on the same features.
IS_SPLITS = 10
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PRC_NEIGHBORHOOD = 3
DC_NEIGHBORHOOD = 5   # Naeem et al.'s k for density/coverage (DEFAULT_K there)
RNG_SEED = 2020


@torch.no_grad()
def extract_features(extractor: Extractor, images: torch.Tensor, batch_size: int = 200,
                     desc: str = "features", quiet: bool = False) -> dict[str, torch.Tensor]:
    """uint8 (N, C, H, W) -> {layer: float32 (N, F)} for every layer the extractor offers."""
    device = next(extractor.module.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    with bar(len(images), f"{desc} ({extractor.name})", "img", quiet) as progress:
        for start in range(0, len(images), batch_size):
            x = to_rgb_uint8(images[start:start + batch_size]).to(device)
            out = extractor.module.convert_features_tuple_to_dict(extractor.module(x))
            for layer, value in out.items():
                parts.setdefault(layer, []).append(value.float().cpu())
            progress.update(len(x))
    return {layer: torch.cat(values) for layer, values in parts.items()}


def fid(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F)."""
    stats = [fid_features_to_statistics(f) for f in (fake, real)]  # float32, as torch-fidelity
    return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS,
                    rng_seed: int = RNG_SEED) -> tuple[float, float]:
    """exp E_x KL(p(y|x) || p(y)), mean and std over splits; at most the number of classes."""
    out = isc_features_to_metric(logits, splits, True, rng_seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def check_kid_samples(n_fake: int, n_real: int, subset_size: int) -> None:
    if min(n_fake, n_real) < subset_size:
        raise ConfigError(f"KID needs at least kid_subset_size={subset_size} samples in each set, "
                          f"got {n_fake} generated and {n_real} real; raise --n-fake/--n-real "
                          f"or lower --kid-subset-size")


def kid(fake: torch.Tensor, real: torch.Tensor, subset_size: int = KID_SUBSET_SIZE,
        subsets: int = KID_SUBSETS, rng_seed: int = RNG_SEED) -> tuple[float, float]:
    """Unbiased MMD^2 with a cubic polynomial kernel, mean and std over random subsets."""
    check_kid_samples(len(fake), len(real), subset_size)
    out = kid_features_to_metric(fake, real, kid_subsets=subsets, kid_subset_size=subset_size,
                                 rng_seed=rng_seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def precision_recall(fake: torch.Tensor, real: torch.Tensor,
                     neighborhood: int = PRC_NEIGHBORHOOD) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019): k-NN balls in feature space."""
    out = prc_features_to_metric(fake, real, prc_neighborhood=neighborhood, verbose=False,
                                 save_cpu_ram=True)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def fidelity_metrics(fake: dict[str, torch.Tensor], real: dict[str, torch.Tensor],
                     extractor: Extractor, metrics, kid_subset_size: int = KID_SUBSET_SIZE,
                     prefix: str = "") -> dict[str, float]:
    """{fid_<ext>, is_<ext>, is_<ext>_std, kid_<ext>, kid_<ext>_std, precision_<ext>,
    recall_<ext>} for the requested metrics; IS is of the `fake` set only."""
    layer = extractor.layers
    out = {}

    def key(metric: str) -> str:
        return schema.fidelity_key(metric, extractor.name, prefix)

    if "fid" in metrics:
        out[key("fid")] = fid(fake[layer["fid"]], real[layer["fid"]])
    if "is" in metrics:
        mean, std = inception_score(fake[layer["isc"]])
        out[key("is")], out[schema.std_key(key("is"))] = mean, std
    if "kid" in metrics:
        mean, std = kid(fake[layer["kid"]], real[layer["kid"]], kid_subset_size)
        out[key("kid")], out[schema.std_key(key("kid"))] = mean, std
    if "prc" in metrics:
        p, r = precision_recall(fake[layer["prc"]], real[layer["prc"]])
        out[key("precision")], out[key("recall")] = p, r
    if "dc" in metrics:  # on the FID features, as the paper computes them
        dc = density_coverage(real=real[layer["fid"]], fake=fake[layer["fid"]],
                              k=DC_NEIGHBORHOOD)
        out[key("density")], out[key("coverage")] = dc.density, dc.coverage
    return out


BOOTSTRAP_LEVEL = 0.95


def bootstrap_intervals(fake: dict[str, torch.Tensor], real: dict[str, torch.Tensor],
                        extractor: Extractor, metrics, kid_subset_size: int, resamples: int,
                        seed: int = 0, level: float = BOOTSTRAP_LEVEL) -> dict[str, float]:
    """Bootstrap confidence intervals for FID and KID over the feature sets: each resample draws
    as many generated and as many real feature vectors as there are, with replacement, and
    recomputes the metric with the same estimator. {fid_<ext>_ci_low, fid_<ext>_ci_high,
    kid_<ext>_ci_low, ...}.

    Resampling with replacement repeats images, which raises FID on its own (FID is biased by
    the number of distinct images), so the percentile interval is shifted back by the bootstrap's
    bias estimate, mean(resampled) - estimate. The interval shows the spread due to the finite
    sets; it does not remove FID's bias in n."""
    if resamples < 2:
        raise ConfigError(f"--bootstrap needs at least 2 resamples, got {resamples}")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("fid", "kid"):
        if name not in metrics:
            continue
        f, r = fake[extractor.layers[name]], real[extractor.layers[name]]

        def metric(a, b):
            return fid(a, b) if name == "fid" else kid(a, b, kid_subset_size)[0]

        estimate = metric(f, r)
        values = []
        for _ in range(resamples):
            i = torch.randint(len(f), (len(f),), generator=gen)
            j = torch.randint(len(r), (len(r),), generator=gen)
            values.append(metric(f[i], r[j]))
        low_key, high_key = schema.ci_keys(schema.fidelity_key(name, extractor.name))
        out[low_key], out[high_key] = percentile_interval(torch.tensor(values), estimate, level)
    return out


def percentile_interval(values: torch.Tensor, estimate: float,
                        level: float = BOOTSTRAP_LEVEL) -> tuple[float, float]:
    """The bootstrap percentile interval of `values` (the metric on resamples), shifted back by
    the bootstrap's bias estimate mean(values) - estimate (see bootstrap_intervals)."""
    values = values.to(torch.float64)
    probs = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = (torch.quantile(values, probs) - (values.mean().item() - estimate)).tolist()
    return low, high

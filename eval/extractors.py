"""Feature extractors for FID / IS / KID / precision-recall, both registered with torch-fidelity.

- `domain`: a small CNN that genbench trains on the dataset's train split (offline, cheap;
  eval/domain_classifier.py). It is cached with its sha256 and test accuracy; FID, KID and PR
  use its penultimate features, IS its logits. Its numbers are comparable only between runs
  evaluated with the same weights (sha256).
- `inception`: torch-fidelity's InceptionV3 (TensorFlow-compatible), the extractor papers use.
  Weights come from --inception-weights / GENBENCH_INCEPTION_WEIGHTS, torch hub's cache, or a
  download, and are checked by sha256 (torch hub convention: the name carries its prefix).

Both take uint8 (B, 3, H, W) images, as torch-fidelity expects.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor

from eval.domain_classifier import DomainClassifier, ensure_domain, sha256_file
from pipeline.errors import ConfigError

EXTRACTORS = ("domain", "inception")
DOMAIN_REGISTRY_NAME = "genbench-domain"
INCEPTION_REGISTRY_NAME = "inception-v3-compat"
INCEPTION_FILE = URL_INCEPTION_V3.rsplit("/", 1)[1]      # weights-inception-2015-12-05-6726825d.pth
INCEPTION_SHA256_PREFIX = INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0]  # 6726825d


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity's view of a cached DomainClassifier (feature_extractor_weights_path)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError("the genbench domain extractor needs feature_extractor_weights_path "
                             "(a classifier from `genbench eval train-classifier`)")
        payload = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.net = DomainClassifier(payload["num_classes"], payload["in_channels"],
                                    payload["width"])
        self.net.load_state_dict(payload["state_dict"])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
        features, logits = self.net(x)
        out = {"features": features, "logits": logits}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)


def register_domain_extractor() -> None:
    if DOMAIN_REGISTRY_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DOMAIN_REGISTRY_NAME, DomainFeatureExtractor)


@dataclass
class Extractor:
    """A feature extractor ready to run, with what the protocol stamp needs to know about it."""

    name: str                      # metric suffix: fid_<name>
    module: FeatureExtractorBase   # created by torch-fidelity from its registry
    layers: dict[str, str]         # torch-fidelity metric ("fid", "isc", "kid", "prc") -> layer
    weights: Path
    sha256: str
    resize: str
    info: dict = field(default_factory=dict)

    def protocol(self) -> dict[str, str]:
        return {"weights": self.weights.name, "weights_sha256": self.sha256,
                "resize": self.resize, **{k: str(v) for k, v in self.info.items()}}


def _create(registry_name: str, weights: Path, device) -> FeatureExtractorBase:
    cls = FEATURE_EXTRACTORS_REGISTRY[registry_name]
    layers = sorted({cls.get_default_feature_layer_for_metric(m)
                     for m in ("isc", "fid", "kid", "prc")})
    module = create_feature_extractor(registry_name, layers, cuda=False,
                                      feature_extractor_weights_path=str(weights), verbose=False)
    return module.to(device)


def domain_extractor(dataset: str, root: str | None, image_size: int, device="cpu",
                     train_if_missing: bool = True, quiet: bool = False,
                     epochs: float | None = None) -> Extractor:
    """The dataset's cached domain classifier; trained once (a few minutes on CPU) if missing.
    epochs: one trained for that many epochs instead of DOMAIN_EPOCHS (its own cache slot)."""
    register_domain_extractor()
    path, meta = ensure_domain(dataset, root, image_size, epochs, device, quiet, train_if_missing)
    module = _create(DOMAIN_REGISTRY_NAME, path, device)
    return Extractor("domain", module, _default_layers(DOMAIN_REGISTRY_NAME), path,
                     meta["sha256"], "none (native size)",
                     {"test_accuracy": f"{meta.get('test_accuracy', float('nan')):.4f}",
                      "epochs": f"{meta.get('epochs', '?')}",
                      "train_images": f"{meta.get('train_images', '?')}"})


def _default_layers(registry_name: str) -> dict[str, str]:
    cls = FEATURE_EXTRACTORS_REGISTRY[registry_name]
    return {m: cls.get_default_feature_layer_for_metric(m) for m in ("isc", "fid", "kid", "prc")}


INCEPTION_HELP = (f"pass --inception-weights PATH (torch-fidelity's {INCEPTION_FILE}) or set "
                  f"GENBENCH_INCEPTION_WEIGHTS, or use --extractor domain")


def inception_weights(path: str | None = None) -> Path:
    """Locate (or download, when online) torch-fidelity's InceptionV3 weights; check sha256."""
    given = path or os.environ.get("GENBENCH_INCEPTION_WEIGHTS")
    if given:
        weights = Path(given).expanduser()
        if not weights.is_file():
            raise ConfigError(f"inception weights file {weights} does not exist; {INCEPTION_HELP}")
    else:
        weights = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if not weights.is_file():
            if os.environ.get("GENBENCH_OFFLINE") == "1":
                raise ConfigError(f"the inception extractor needs its weights and "
                                  f"GENBENCH_OFFLINE=1 forbids downloading them; {INCEPTION_HELP}")
            weights.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(URL_INCEPTION_V3, str(weights),
                                               INCEPTION_SHA256_PREFIX, progress=True)
            except Exception as exc:  # offline (URLError), proxy, or a corrupt download
                raise ConfigError(f"the inception extractor's weights could not be downloaded "
                                  f"({type(exc).__name__}); {INCEPTION_HELP}") from None
    digest = sha256_file(weights)
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise ConfigError(f"{weights} has sha256 {digest[:12]}..., not torch-fidelity's "
                          f"InceptionV3 weights ({INCEPTION_SHA256_PREFIX}...); {INCEPTION_HELP}")
    # torch-fidelity unpickles the file with weights_only=False; an 8-hex-digit prefix is easy
    # to forge, so first prove it is a plain state dict.
    try:
        torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{weights} is not a plain tensor state dict ({type(exc).__name__}); "
                          f"{INCEPTION_HELP}") from None
    return weights


def inception_extractor(path: str | None = None, device="cpu") -> Extractor:
    weights = inception_weights(path)
    module = _create(INCEPTION_REGISTRY_NAME, weights, device)
    return Extractor("inception", module, _default_layers(INCEPTION_REGISTRY_NAME), weights,
                     sha256_file(weights), "bilinear (TensorFlow-1 compatible) to 299x299")


def get_extractor(name: str, dataset: str, root: str | None, image_size: int, device="cpu",
                  inception_weights_path: str | None = None, quiet: bool = False,
                  domain_epochs: float | None = None) -> Extractor:
    if name == "domain":
        return domain_extractor(dataset, root, image_size, device, quiet=quiet,
                                epochs=domain_epochs)
    if name == "inception":
        return inception_extractor(inception_weights_path, device)
    raise ConfigError(f"unknown extractor {name!r}; use {' or '.join(EXTRACTORS)}")

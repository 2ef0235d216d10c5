"""The discriminative baseline: the domain classifier (eval/domain_classifier.py) as a classifier.

Its max softmax probability is the OOD baseline (Hendrycks & Gimpel 2017), and its accuracy, NLL
and calibration stand next to the Bayes classifier's. It must know the same classes as the run:
for a run trained without some classes (data.exclude_classes) a classifier is trained without
them, with the cached domain classifier's recipe (epochs, images, width, seed), and cached beside
it; its softmax covers only the classes it was trained on.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch

from eval.domain_classifier import (DOMAIN_ARCH_VERSION, DOMAIN_EPOCHS, DomainClassifier,
                                    cache_dir, cache_lock, cached_domain, dataset_key,
                                    domain_variant, ensure_domain, save_domain_classifier,
                                    sha256_file, to_rgb_uint8, train_domain_classifier)
from pipeline.data import ImageData, load_raw, without_classes


@dataclass
class Classifier:
    net: DomainClassifier
    classes: list[int]    # the classes its softmax covers
    sha256: str
    test_accuracy: float  # on the dataset's test split (less excluded classes)
    trained_on: str

    @torch.no_grad()
    def log_probs(self, images: torch.Tensor, batch_size: int = 500,
                  device="cpu") -> torch.Tensor:
        """log p(y|x) (N, K) float64 over all K classes; -inf for classes it does not know."""
        self.net.eval()
        parts = []
        for start in range(0, len(images), batch_size):
            x = to_rgb_uint8(images[start:start + batch_size]).to(device)
            logits = self.net(x)[1].double().cpu()
            out = torch.full_like(logits, -torch.inf)
            out[:, self.classes] = torch.log_softmax(logits[:, self.classes], dim=1)
            parts.append(out)
        return torch.cat(parts)

    def msp_score(self, images: torch.Tensor, batch_size: int = 500, device="cpu"):
        """1 - max softmax probability (N,): higher = more out of distribution."""
        return 1.0 - self.log_probs(images, batch_size, device).exp().max(1).values


def _load(path, meta: dict, classes: list[int], device) -> Classifier:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    net = DomainClassifier(payload["num_classes"], payload["in_channels"], payload["width"])
    net.load_state_dict(payload["state_dict"])
    excluded = meta.get("excluded_classes") or []
    trained_on = (f"{meta.get('dataset', '?')} train split"
                  + (f" without classes {excluded}" if excluded else "")
                  + f" ({meta.get('epochs', '?')} epochs)")
    return Classifier(net.to(device).eval(), classes, meta["sha256"],
                      float(meta.get("test_accuracy", float("nan"))), trained_on)


def baseline_classifier(dataset: str, root: str | None, image_size: int, excluded=(),
                        device="cpu", quiet: bool = False,
                        epochs: float | None = None) -> Classifier:
    """The cached domain classifier, or (classes excluded) one trained without those classes.
    epochs: the cheaper classifier trained for that many epochs (eval's domain_epochs), the one
    the run's FID features come from."""
    excluded = sorted(set(excluded))
    variant = domain_variant(epochs)
    if not excluded:
        path, meta = ensure_domain(dataset, root, image_size, epochs, device, quiet)
        return _load(path, meta, list(range(meta["num_classes"])), device)

    stem = (f"{dataset_key(dataset, image_size)}-without{'-'.join(map(str, excluded))}"
            f"-v{DOMAIN_ARCH_VERSION}" + (f"-{variant}" if variant else ""))
    pt_path, json_path = cache_dir() / "domain" / f"{stem}.pt", cache_dir() / "domain" / f"{stem}.json"
    with cache_lock(pt_path):  # evals that miss at once: one trains, the others reuse it
        return _excluded_classifier(dataset, root, image_size, excluded, device, quiet, epochs,
                                    variant, pt_path, json_path)


def _excluded_classifier(dataset, root, image_size, excluded, device, quiet, epochs, variant,
                         pt_path, json_path) -> Classifier:
    if pt_path.is_file() and json_path.is_file():
        meta = json.loads(json_path.read_text())
        if meta.get("sha256") == sha256_file(pt_path):
            return _load(pt_path, meta, meta["classes"], device)
    # the recipe of the cached domain classifier (epochs, images, width, seed), where there is one
    found = cached_domain(dataset, image_size, variant)
    full = found[1] if found else {}
    epochs, width, seed = (full.get("epochs", DOMAIN_EPOCHS if epochs is None else epochs),
                           full.get("width", 16), full.get("seed", 0))
    train = without_classes(load_raw(dataset, True, root, image_size), excluded)
    test = without_classes(load_raw(dataset, False, root, image_size), excluded)
    max_images = full.get("train_images")
    if max_images and max_images < len(train):
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = ImageData(train.images[idx[:max_images]], train.labels[idx[:max_images]],
                          train.num_classes)
    if not quiet:
        print(f"genbench: training a classifier for {dataset} without classes {excluded} once; "
              f"it is cached under {cache_dir() / 'domain'}", file=sys.stderr, flush=True)
    net, acc = train_domain_classifier(train, test, epochs, width, seed=seed, device=device,
                                       quiet=quiet, hflip=dataset != "mnist")
    classes = [c for c in range(train.num_classes) if c not in excluded]
    meta = {"dataset": dataset, "image_shape": list(train.image_shape),
            "num_classes": train.num_classes, "classes": classes, "excluded_classes": excluded,
            "test_accuracy": acc, "epochs": epochs, "train_images": len(train), "width": width,
            "seed": seed, "arch_version": DOMAIN_ARCH_VERSION}
    meta = save_domain_classifier(net.cpu(), meta, pt_path, json_path)
    return _load(pt_path, meta, classes, device)


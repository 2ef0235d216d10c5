"""`genbench eval --metrics ood`: can the model reject inputs it has never seen?

The in-distribution test split (less data.exclude_classes) is scored against each OOD set
(eval/ood/sets.py) with every score that applies to the family (eval/ood/scores.py) and with the
domain classifier's max softmax probability, the discriminative baseline. Each (score, set) gives
AUROC, AUPR and FPR at 95% TPR (eval/ood/metrics.py), logged as ood_<metric>_<set>_<score>; the
protocol goes into eval.ood.* tags, and the score histograms into one PNG.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from eval.likelihood import data_description, pixel_bits
from eval.ood import metrics as ood_metrics
from eval.ood.background import MUTATION_RATE, background_batch, recipe, train_background
from eval.ood.baseline import Classifier
from eval.ood.bayes import log_prior
from eval.ood.plots import score_histograms_png
from eval.ood.scores import DESCRIPTIONS, ModelScorer, family_scores, png_bits_per_dim
from eval.ood.sets import DESCRIPTIONS as SET_DESCRIPTIONS
from eval.ood.sets import SETS, build_sets, subset
from pipeline import schema
from pipeline.data import ImageData, load_split, only_classes
from pipeline.models import FAMILIES

DEFAULT_IMAGES = 1000          # per set, and in-distribution test images
DEFAULT_BACKGROUND_STEPS = 300


@dataclass
class OODResult:
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    histograms: bytes | None = None
    means: dict[str, dict[str, float]] = field(default_factory=dict)  # score -> set -> mean


def auroc_lines(metrics: dict[str, float]) -> list[str]:
    """The logged ood_auroc_* as a score x set table of text lines (empty when none)."""
    table: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parsed = schema.parse_ood_key(key)
        if parsed and parsed[0] == "auroc":
            table.setdefault(parsed[2], {})[parsed[1]] = value
    if not table:
        return []
    seen = {s for row in table.values() for s in row}
    sets = [s for s in SETS if s in seen] + sorted(seen - set(SETS))  # then users' folders
    lines = ["OOD AUROC (ood_auroc_<set>_<score>; 0.5 = chance, 1 = perfect rejection)",
             f"{'score':<12}" + "".join(f"{s:>10}" for s in sets)]
    for score in [s for s in DESCRIPTIONS if s in table]:
        lines.append(f"{score:<12}" + "".join(
            f"{table[score][s]:>10.3f}" if s in table[score] else f"{'—':>10}" for s in sets))
    return lines


def unseen_test(cfg) -> ImageData | None:
    """The test images of the classes the run never trained on, or None."""
    d = cfg.data
    if not d.exclude_classes:
        return None
    test = load_split(d.dataset, "test", d.root, d.val_fraction, d.split_seed, d.image_size)
    return only_classes(test, d.exclude_classes)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"genbench: ood: {text}", file=sys.stderr, flush=True)


def evaluate_ood(model, train: ImageData, classifier: Classifier | None, *,
                 sets=SETS, images: int = DEFAULT_IMAGES, k: int = 1,
                 background_steps: int = DEFAULT_BACKGROUND_STEPS, batch_size: int = 250,
                 seed: int = 0, device="cpu", quiet: bool = True) -> OODResult:
    """model: an eval.load.LoadedModel; train: its train split (class prior, background model)."""
    cfg = model.cfg
    family = FAMILIES[cfg.model]
    out = OODResult()
    in_dist = subset(model.test.images, images, seed)
    ood_sets, skipped = build_sets(model.test, unseen_test(cfg), sets, images, seed,
                                   cfg.data.dataset, cfg.data.root)
    for name, why in skipped.items():
        out.notes.append(f"ood set {name} skipped: {why}")
        out.tags[schema.ood_set_tag(name)] = f"skipped: {why}"
    if not ood_sets:
        out.notes.append("ood: no OOD set could be built")
        return out

    prior = log_prior(train.labels, train.num_classes) if cfg.train.conditional else None
    scorer = ModelScorer(cfg.model, cfg.family, model.nets, prior, k, batch_size, device, seed)
    names = list(family_scores(family))
    if "ratio" in names and background_steps <= 0:
        names.remove("ratio")
        out.notes.append("ood score ratio skipped: --ood-background-steps 0")
    if classifier is not None:
        names.append("msp")
    groups = {"in": in_dist, **{n: s.images for n, s in ood_sets.items()}}
    scores: dict[str, dict[str, torch.Tensor]] = {}
    t0 = time.time()

    def score_all(fn, label):
        _say(quiet, f"{label} on {len(groups)} sets of <= {images} images")
        return {g: fn(x) for g, x in groups.items()}

    if "bpd" in names:
        scores["bpd"] = score_all(scorer.bits_per_dim, "bits/dim")
        if "complexity" in names:
            bits = pixel_bits(family, cfg.family)
            scores["complexity"] = {g: scores["bpd"][g] - png_bits_per_dim(x, bits)
                                    for g, x in groups.items()}
        if "ratio" in names:
            _say(quiet, f"training the background model ({background_steps} steps)")
            with torch.random.fork_rng(devices=[]):
                bg_nets = train_background(cfg, train, background_steps, device, seed)
            bg = ModelScorer(cfg.model, cfg.family, bg_nets, None, k, batch_size, device, seed)
            bg_bpd = score_all(bg.bits_per_dim, "background bits/dim")
            scores["ratio"] = {g: scores["bpd"][g] - bg_bpd[g] for g in groups}
    if "recon" in names:
        scores["recon"] = score_all(scorer.reconstruction_error, "reconstruction error")
    if "neglogd" in names:
        scores["neglogd"] = score_all(scorer.neg_log_d, "-log D(x)")
    if "msp" in names:
        scores["msp"] = score_all(lambda x: classifier.msp_score(x, batch_size, device),
                                  "classifier max softmax")

    for score, per_group in scores.items():
        out.means[score] = {g: float(v.mean()) for g, v in per_group.items()}
        for name in ood_sets:
            for metric, value in ood_metrics.detection_metrics(per_group["in"],
                                                               per_group[name]).items():
                out.metrics[schema.ood_key(metric, name, score)] = value

    out.histograms = score_histograms_png(f"{cfg.model}: OOD scores", scores)
    out.tags.update(protocol_tags(cfg, ood_sets, list(scores), len(in_dist), images, k,
                                  background_steps if "ratio" in scores else 0, seed,
                                  classifier, time.time() - t0, len(train)))
    return out


def protocol_tags(cfg, ood_sets, scores, n_in, images, k, background_steps, seed,
                  classifier, seconds, n_train) -> dict[str, str]:
    def tag(*parts) -> str:
        return schema.eval_tag("ood", *parts)

    tags = {tag(): "AUROC, AUPR (average precision, OOD positive) and FPR at 95% TPR; "
                   "higher score = more out of distribution; ties count half (AUROC) "
                   "and are flagged together",
            tag("in_distribution"): f"{n_in} test images"
                                    + (f" without classes {list(cfg.data.exclude_classes)}"
                                       if cfg.data.exclude_classes else ""),
            tag("images_per_set"): str(images), tag("seed"): str(seed),
            tag("sets"): ",".join(ood_sets), tag("scores"): ",".join(scores),
            tag("seconds"): f"{seconds:.0f}"}
    for name, s in ood_sets.items():
        tags[schema.ood_set_tag(name)] = (f"{len(s)} images: "
                                          f"{s.description or SET_DESCRIPTIONS[name]}")
    for score in scores:
        tags[schema.ood_score_tag(score)] = DESCRIPTIONS[score]
    if "bpd" in scores:
        tags[tag("score", "bpd", "k")] = str(k)
        tags[tag("score", "bpd", "data")] = data_description(
            pixel_bits(FAMILIES[cfg.model], cfg.family))
    if background_steps:
        tags[tag("background")] = recipe(background_steps, MUTATION_RATE,
                                         background_batch(cfg, n_train))
    if cfg.data.exclude_classes:
        tags[tag("exclude_classes")] = ",".join(map(str, cfg.data.exclude_classes))
    if classifier is not None:
        tags[tag("classifier")] = (f"domain classifier sha256 {classifier.sha256[:16]}, "
                                   f"trained on the {classifier.trained_on}, test accuracy "
                                   f"{classifier.test_accuracy:.4f}")
    return tags

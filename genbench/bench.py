"""`genbench bench`: the one-command benchmark. Train every family, evaluate each, run a small
beta/lr sweep, and write the report, all into one fresh MLflow experiment.

A stage that fails is reported and the rest go on, so the report still shows what worked and
says what is missing; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime

from eval.ood_sets import SETS as OOD_SETS
from genbench.options import DATASET_HELP
from pipeline.config import Config


@dataclass(frozen=True)
class Preset:
    train: dict[str, dict]                    # family -> config overrides
    n_fake: dict[str, int]                    # family -> generated images for FID & co.
    n_real: int
    extractors: tuple[str, ...]
    k: int                                    # VAE importance samples
    bpd_images: int | None
    probe_images: int | None
    tune: dict = field(default_factory=dict)  # genbench tune arguments
    # "Can it reject the unseen?" (eval --metrics ood / bayes)
    ood_sets: tuple[str, ...] = ()            # sets every family is scored on; () = no OOD eval
    ood_images: int = 1000                    # per set, and in-distribution test images
    ood_background_steps: int = 300           # likelihood-ratio background model
    unseen_classes: tuple[int, ...] = ()      # one more run per family, trained without these
    bayes: tuple[str, ...] = ()               # families that get a conditional run for Bayes'
    bayes_images: int = 1000                  # rule; "*" = every family with a likelihood


ALL_LIKELIHOOD = "*"


PRESETS = {
    # quick: within 20 minutes on 2 CPU cores, Fashion-MNIST
    "quick": Preset(
        train={"ae": {"train": {"steps": 300}},
               "vae": {"train": {"steps": 400}},
               "gan": {"train": {"steps": 600, "batch_size": 64}},
               "pixelcnn": {"train": {"steps": 200, "batch_size": 32}}},
        n_fake={"vae": 2000, "gan": 2000, "pixelcnn": 200}, n_real=2000,
        extractors=("domain",), k=8, bpd_images=2000, probe_images=10000,
        tune={"model": "vae", "samples": 4, "steps": 150},
        ood_sets=("digits", "noise", "constant", "flipped", "inverted"), ood_images=300,
        ood_background_steps=100, bayes=("vae",), bayes_images=500),
    # full: sized for a GPU cluster and numbers comparable with papers (50k samples for FID)
    "full": Preset(
        train={"ae": {"train": {"epochs": 50}}, "vae": {"train": {"epochs": 100}},
               "gan": {"train": {"epochs": 50, "batch_size": 128}},
               "pixelcnn": {"train": {"epochs": 50},
                            "pixelcnn": {"channels": 128, "layers": 12, "kernel": 5,
                                         "head_channels": 256}}},
        n_fake={"vae": 50000, "gan": 50000, "pixelcnn": 10000}, n_real=10000,
        extractors=("domain", "inception"), k=512, bpd_images=None, probe_images=None,
        tune={"model": "vae", "samples": 32, "steps": 5000},
        ood_sets=OOD_SETS, ood_images=5000, ood_background_steps=2000,
        unseen_classes=(8,),            # Fashion-MNIST: bag, the one class that is no garment
        bayes=(ALL_LIKELIHOOD,), bayes_images=5000),
}


class Stages:
    """Runs named stages with a visible progress line each, keeping going after a failure."""

    def __init__(self, total: int):
        self.total, self.done, self.failed, self.t0 = total, 0, [], time.time()

    def run(self, name: str, fn):
        self.done += 1
        print(f"\n[{self.done}/{self.total}] {name}  ({(time.time() - self.t0) / 60:.1f} min "
              f"elapsed)", file=sys.stderr, flush=True)
        try:
            return fn()
        except Exception as exc:  # keep going: the report says what is missing
            from pipeline.errors import ConfigError
            if not isinstance(exc, ConfigError):
                traceback.print_exc(limit=3, file=sys.stderr)
            print(f"genbench: stage {name!r} failed: {exc}", file=sys.stderr, flush=True)
            self.failed.append(name)
            return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=list(PRESETS), default="quick",
                   help="quick: minutes on 2 CPU cores; full: sized for a GPU cluster")
    p.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    p.add_argument("--experiment", help="MLflow experiment (default: a new one, "
                   "bench-<preset>-<date-time>, so runs and reports are never mixed)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")


def run(args) -> int:
    from genbench.training import print_summary
    from pipeline.launch import init_ray, train

    preset = PRESETS[args.preset]
    experiment = args.experiment or f"bench-{args.preset}-{datetime.now():%Y%m%d-%H%M%S}"
    families = list(preset.train)
    variants = ood_variants(preset)
    stages = Stages(2 * (len(families) + len(variants)) + (1 if preset.tune else 0) + 1)
    print(f"genbench bench --preset {args.preset}: {', '.join(families)} on {args.dataset}; "
          f"MLflow experiment {experiment!r}", file=sys.stderr, flush=True)
    init_ray(args.address, args.verbose)

    runs: dict[str, str] = {}
    jobs = [(family, family, {}) for family in families] + variants
    for name, family, extra in jobs:
        overrides = preset.train[family]
        raw = {"model": family, **overrides,
               "data": {"dataset": args.dataset, **extra.get("data", {})},
               "train": {"eval_every": 10**9, **overrides.get("train", {}),
                         **extra.get("train", {})}}

        def train_one(raw=raw):
            result = train(Config.from_dict(raw), experiment=experiment,
                           address=args.address, verbose=args.verbose)
            print_summary(result)
            return result.run_id

        run_id = stages.run(f"train {name}", train_one)
        if run_id:
            runs[name] = run_id

    for name, family, extra in jobs:
        if name not in runs:
            stages.run(f"eval {name}", lambda name=name: _missing(f"no trained {name}"))
            continue
        stages.run(f"eval {name}", lambda name=name, family=family, extra=extra: _evaluate(
            runs[name], family, preset, extra))

    if preset.tune:
        t = preset.tune

        def sweep_one():
            from tune.sweep import SweepOptions, sweep
            cfg = Config.from_dict({"model": t["model"], "data": {"dataset": args.dataset},
                                    "train": {"steps": t["steps"]}})
            code = sweep(cfg, SweepOptions(samples=t["samples"], experiment=experiment,
                                           address=args.address, verbose=args.verbose))
            if code != 0:
                raise RuntimeError(f"the sweep ended with exit code {code}")

        stages.run(f"sweep {t['model']} ({t['samples']} trials)", sweep_one)

    def report():
        from eval.report import write_report
        html = write_report(experiment, None, force=False)
        print(f"report: {html}\n        {html.with_name('report.md')}")
        return html

    html = stages.run("report", report)
    minutes = (time.time() - stages.t0) / 60
    print(f"\nbench ({args.preset}) finished in {minutes:.1f} min; MLflow experiment "
          f"{experiment!r}")
    for family, run_id in runs.items():
        print(f"  {family:<9} {run_id}")
    if html:
        print(f"  report    {html}")
    if stages.failed:
        print(f"genbench: {len(stages.failed)} stage(s) failed: {', '.join(stages.failed)}",
              file=sys.stderr)
        return 1
    return 0


def _missing(why: str):
    from pipeline.errors import ConfigError
    raise ConfigError(f"skipped: {why}")


def ood_variants(preset: Preset) -> list[tuple[str, str, dict]]:
    """(stage name, family, config additions) of the extra runs the OOD section needs: each
    family without the unseen classes, and a conditional run of the Bayes families."""
    from eval.ood_scores import has_likelihood
    from pipeline.models import FAMILIES

    out = []
    if preset.unseen_classes:
        k = ",".join(map(str, preset.unseen_classes))
        out += [(f"{family} without class {k}", family,
                 {"data": {"exclude_classes": list(preset.unseen_classes)}})
                for family in preset.train]
    bayes = [f for f in preset.train if ALL_LIKELIHOOD in preset.bayes or f in preset.bayes]
    out += [(f"{family} conditional", family, {"train": {"conditional": True}})
            for family in bayes if has_likelihood(FAMILIES[family])]
    return out


def _evaluate(run_id: str, family: str, preset: Preset, extra: dict | None = None):
    """The preset's evaluation of a main run; an unseen-class run gets only the unseen set, a
    conditional one its Bayes classifier and its p(x) on the OOD sets."""
    from eval.run import DEFAULT_METRICS, EvalOptions, evaluate, print_report

    extra = extra or {}
    sets = tuple(s for s in preset.ood_sets if s != "unseen")
    ood = {"ood_images": preset.ood_images, "ood_background_steps": preset.ood_background_steps,
           "bayes_images": preset.bayes_images, "k": preset.k}
    if "exclude_classes" in extra.get("data", {}):
        opts = EvalOptions(run_id=run_id, metrics=("ood",), ood_sets=("unseen",), **ood)
    elif extra.get("train", {}).get("conditional"):
        opts = EvalOptions(run_id=run_id, metrics=("bayes", "ood") if sets else ("bayes",),
                           ood_sets=sets or OOD_SETS, **{**ood, "ood_background_steps": 0})
    else:
        n_fake = preset.n_fake.get(family)
        opts = EvalOptions(run_id=run_id, extractors=preset.extractors, n_fake=n_fake,
                           n_real=preset.n_real, bpd_images=preset.bpd_images,
                           probe_images=preset.probe_images,
                           metrics=DEFAULT_METRICS + (("ood",) if sets else ()),
                           ood_sets=sets or OOD_SETS, **ood)
    result = evaluate(opts)
    print_report(result)
    return result

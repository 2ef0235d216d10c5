"""Issue 12's numbers without Ray or MLflow: can each family reject the unseen, and how does
Bayes' rule on p(x|y) classify next to the domain classifier?

Per family: one run trained without class K (data.exclude_classes), scored against the unseen
class, scikit-learn's digits, noise (and the other synthetic sets with --all-sets) with every
score the family has, next to a classifier trained without class K. Per likelihood family, one
conditional run on all classes: the Bayes classifier's accuracy, NLL and ECE next to the domain
classifier's. Prints Markdown tables; writes them (and the histograms) to --out.

    python -m benchmarks.ood_check --device cuda --epochs 3                # GPU: a few epochs
    python -m benchmarks.ood_check --steps 300 --images 500 --families ae,vae,gan   # CPU taste
    python -m benchmarks.ood_check --smoke     # does it run? (tiny nets, 4 steps, 50 images)

Needs torch, torchvision, torch-fidelity (the domain classifier's module), scikit-learn,
matplotlib; the domain classifier is cached in GENBENCH_CACHE as usual.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import add_smoke, family_sets, print_table, tiny_sets
from eval.load import LoadedModel
from eval.ood import auroc_lines, evaluate_ood
from eval.ood.background import fit_in_process
from eval.ood.baseline import baseline_classifier
from eval.ood.bayes import evaluate_bayes
from eval.ood.scores import has_likelihood
from eval.ood.sets import SETS
from pipeline.config import Config, merge, parse_overrides
from pipeline.data import load_config_split
from pipeline.models import FAMILIES
from pipeline.schema import parse_ood_key

BATCH = {"ae": 128, "vae": 128, "gan": 64, "pixelcnn": 64, "transformer": 64}


def train(family: str, args, **data_train) -> tuple[LoadedModel, object]:
    raw = {"model": family, "data": {"dataset": args.dataset, **data_train.get("data", {})},
           "train": {"batch_size": BATCH.get(family, 64), "seed": args.seed,
                     **({"steps": args.steps} if args.steps else {"epochs": args.epochs}),
                     **data_train.get("train", {})}}
    cfg = Config.from_dict(merge(raw, parse_overrides(family_sets(family, args.set))))
    train_split = load_config_split(cfg.data, "train")
    test = load_config_split(cfg.data, "test")
    t0 = time.time()
    nets = fit_in_process(cfg, train_split, args.device)
    print(f"  trained {family} {data_train or ''} in {time.time() - t0:.0f}s", flush=True)
    return LoadedModel(cfg, nets, {}, 0, None, "ood_check", test), train_split


def best_auroc(metrics: dict[str, float], sets) -> list[str]:
    """Per OOD set, the best score's AUROC and the score's name ("0.912 (bpd)")."""
    best: dict[str, tuple[float, str]] = {}
    for key, value in metrics.items():
        parsed = parse_ood_key(key)
        if parsed and parsed[0] == "auroc" and value > best.get(parsed[1], (-1.0, ""))[0]:
            best[parsed[1]] = (value, parsed[2])
    return [f"{best[s][0]:.3f} ({best[s][1]})" if s in best else "—" for s in sets]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--unseen", type=int, default=8, help="class left out (default 8: bag)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--steps", type=int, help="instead of --epochs (CPU tastes)")
    p.add_argument("--images", type=int, default=2000, help="per OOD set and for Bayes")
    p.add_argument("--background-steps", type=int, default=1000)
    p.add_argument("--k", type=int, default=16, help="VAE importance samples")
    p.add_argument("--all-sets", action="store_true", help="constant, flipped, inverted, mnist too")
    p.add_argument("--no-bayes", action="store_true", help="only the OOD comparison")
    p.add_argument("--no-ood", action="store_true", help="only the Bayes comparison")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the family it names (e.g. pixelcnn.channels=16) "
                   "or every run (train.batch_size=32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="ood_check")
    add_smoke(p)
    args = p.parse_args(argv)
    if args.smoke:  # each family's tiny size, a few steps and images; the sets stay real
        args.steps, args.images, args.background_steps, args.k = 4, 50, 4, 2
        args.set = [kv for f in args.families.split(",") for kv in tiny_sets(f)] + [
            "train.batch_size=16", *args.set]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = SETS if args.all_sets else ("unseen", "digits", "noise")
    families = args.families.split(",")
    t_all = time.time()
    first = Config.from_dict({"data": {"dataset": args.dataset}}).data
    # the full one first: the one without class K is trained with its recipe
    full = baseline_classifier(args.dataset, first.root, first.image_size, (), args.device,
                               quiet=True)
    without = baseline_classifier(args.dataset, first.root, first.image_size, [args.unseen],
                                  args.device, quiet=True)
    record = {"args": vars(args), "ood": {}, "bayes": {}}
    lines = [f"## OOD AUROC, {args.dataset} without class {args.unseen} "
             f"({args.steps or args.epochs} {'steps' if args.steps else 'epochs'}, "
             f"{args.images} images per set, device {args.device})", ""]
    for family in [] if args.no_ood else families:
        model, train_split = train(family, args, data={"exclude_classes": [args.unseen]})
        result = evaluate_ood(model, train_split, without, sets=sets, images=args.images,
                              k=args.k, background_steps=args.background_steps,
                              seed=args.seed, device=args.device, quiet=True)
        record["ood"][family] = result.metrics
        lines += [f"### {family}", "```", *auroc_lines(result.metrics), "```", ""]
        print("\n".join(lines[-5:]), flush=True)
        if result.histograms:
            (out / f"ood_{family}.png").write_bytes(result.histograms)
    if not args.no_bayes:
        lines += ["## Bayes classifier (conditional, all classes) vs the domain classifier", "",
                  "| model | accuracy | NLL | ECE | classifier accuracy | classifier ECE |",
                  "|---|---:|---:|---:|---:|---:|"]
        for family in [f for f in families if has_likelihood(FAMILIES[f])]:
            model, train_split = train(family, args, train={"conditional": True})
            metrics, _ = evaluate_bayes(model, train_split, full, images=args.images, k=args.k,
                                        seed=args.seed, device=args.device, quiet=True)
            record["bayes"][family] = metrics
            lines.append(f"| {family} | {metrics['bayes_accuracy']:.4f} | "
                         f"{metrics['bayes_nll']:.3f} | {metrics['bayes_ece']:.4f} | "
                         f"{metrics['classifier_accuracy']:.4f} | "
                         f"{metrics['classifier_ece']:.4f} |")
            print(lines[-1], flush=True)
    if record["ood"]:
        print(f"\n## Best OOD AUROC per set, {args.dataset} without class {args.unseen}\n")
        print_table(["family", *sets], [[f, *best_auroc(m, sets)]
                                         for f, m in record["ood"].items()])
    lines.append(f"\n{time.time() - t_all:.0f}s in all")
    (out / "ood_check.md").write_text("\n".join(lines) + "\n")
    (out / "ood_check.json").write_text(json.dumps(record, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Argument types and the config built from `genbench train`/`tune` arguments."""
from __future__ import annotations

import argparse
import sys

DATASET_HELP = "fashion-mnist (default), mnist, cifar10, or a path to an ImageFolder directory"


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (the default prints the whole usage first)."""

    def error(self, message: str):
        print(f"genbench: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_model_argument(p: argparse.ArgumentParser) -> None:
    from pipeline.models import DEFAULT_FAMILY, names
    p.add_argument("--model", choices=names(), help=f"model family (default: "
                   f"{DEFAULT_FAMILY}, or the config file's)")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--dataset", help=DATASET_HELP)
    p.add_argument("--workers", type=positive_int, help="Ray Train workers, one DDP rank each "
                   "(default 1)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, nccl, bf16 autocast")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=positive_int, help="optimizer steps (default: 1 epoch)")
    steps.add_argument("--epochs", type=positive_float, help="epochs over the train split")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config with sections model, "
                   "data, train and the family's (e.g. vae:)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key, e.g. --set vae.beta=4 --set train.batch_size=64")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--storage-path", help="where Ray keeps checkpoints (default ./ray_results); "
                   "shared storage such as s3://... or NFS on multi-node clusters")


def build_config(args, base: dict | None = None):
    """The Config these arguments ask for: defaults < base < --config file < flags < --set."""
    from pipeline.config import Config, load_yaml, merge, parse_overrides

    raw = dict(base or {})
    if getattr(args, "config", None):
        raw = merge(raw, load_yaml(args.config))
    cli: dict = {}
    if args.model:
        cli["model"] = args.model
    if args.dataset:
        cli.setdefault("data", {})["dataset"] = args.dataset
    for key in ("workers", "steps", "epochs", "seed", "storage_path"):
        value = getattr(args, key, None)
        if value is not None:
            cli.setdefault("train", {})[key] = value
    if getattr(args, "gpu", False):
        cli.setdefault("train", {})["gpu"] = True
    if cli.get("train", {}).get("steps") is not None:
        raw.get("train", {}).pop("epochs", None)
    if cli.get("train", {}).get("epochs") is not None:
        raw.get("train", {}).pop("steps", None)
    raw = merge(raw, cli)
    raw = merge(raw, parse_overrides(args.set))
    return Config.from_dict(raw)

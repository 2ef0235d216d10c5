"""The two autoregressive families after the same wall-clock budget: PixelCNN vs Transformer,
exact test bits/dim side by side.

Each family trains with genbench's Ray-free loop (`pipeline.loop.fit`, the code Ray Train runs
on every worker: same batches, autocast, optimizer steps) on one process, from the same seed
and batch size, until `--seconds` of training have passed; then its networks score the test
split with `eval.likelihood.nll_sums` (what `genbench eval --metrics bpd` computes). The clock
starts after the data is loaded and is checked every `--check-every` steps, where the loop
hands over a checkpoint, so a run overshoots by at most that many steps (the table shows the
seconds and steps actually used).

    .venv/bin/python -m benchmarks.ar_budget --seconds 300                 # CPU
    .venv/bin/python -m benchmarks.ar_budget --seconds 300 --gpu           # one GPU, bf16
    .venv/bin/python -m benchmarks.ar_budget --seconds 20 --test-images 500 \
        --set transformer.d_model=32 --set pixelcnn.channels=16           # a short run
    .venv/bin/python -m benchmarks.ar_budget --smoke    # does it run? (tiny nets, ~1 s each)
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import add_smoke, print_table, tiny_sets, where
from eval.likelihood import nll_sums
from pipeline import checkpoint as ckpt
from pipeline.config import Config, merge, parse_overrides
from pipeline.data import load_split
from pipeline.loop import Context, build_nets, fit

FAMILIES = ("pixelcnn", "transformer")


class BudgetSpent(Exception):
    def __init__(self, payload: dict, metrics: dict, seconds: float):
        super().__init__("budget spent")
        self.payload, self.metrics, self.seconds = payload, metrics, seconds


def config(family: str, args, sets: dict) -> Config:
    raw = {"model": family, "data": {"dataset": args.dataset},
           "train": {"steps": 10**9, "batch_size": args.batch_size, "seed": args.seed,
                     "gpu": args.gpu, "log_every": args.check_every,
                     "checkpoint_every": args.check_every, "eval_every": 10**9}}
    ours = {k: v for k, v in sets.items() if k in (family, "train", "data")}
    return Config.from_dict(merge(raw, ours))


def train_for(cfg: Config, seconds: float, device: torch.device, data, val) -> BudgetSpent:
    """Run the loop until `seconds` have passed; the BudgetSpent carries the last checkpoint."""
    t0 = time.perf_counter()

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        spent = time.perf_counter() - t0
        if checkpoint_dir is not None and spent >= seconds:
            raise BudgetSpent(ckpt.load(checkpoint_dir), metrics, spent)

    try:
        fit(cfg, Context(device=device), report, data=data, val=val)
    except BudgetSpent as done:
        return done
    raise RuntimeError("the loop ended before the budget was spent")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300, help="training budget per family")
    ap.add_argument("--gpu", action="store_true", help="train and score on cuda (bf16 autocast)")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-every", type=int, default=None,
                    help="steps between budget checks (default 10 on CPU, 50 on GPU)")
    ap.add_argument("--test-images", type=int, default=10000, help="test images scored")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. transformer.d_model=128 (repeatable)")
    add_smoke(ap)
    args = ap.parse_args(argv)
    if args.smoke:  # tiny nets; the budget is checked every 2 steps
        args.seconds, args.test_images, args.batch_size = 1.0, 50, 16
        args.check_every = args.check_every or 2
        args.set = [kv for f in args.families.split(",") for kv in tiny_sets(f)] + args.set
    args.check_every = args.check_every or (50 if args.gpu else 10)
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("ar_budget: --gpu given but torch sees no CUDA device")
    device = torch.device("cuda" if args.gpu else "cpu")
    sets = parse_overrides(args.set)

    data = load_split(args.dataset, "train")
    val = load_split(args.dataset, "val")
    test = load_split(args.dataset, "test")
    test = type(test)(test.images[:args.test_images], test.labels[:args.test_images],
                      test.num_classes)
    rows = []
    for family in args.families.split(","):
        cfg = config(family, args, sets)
        done = train_for(cfg, args.seconds, device, data, val)
        nets, _ = build_nets(cfg, data, device, world=1)
        ckpt.restore(done.payload, nets, {}, "the budget checkpoint")
        t0 = time.perf_counter()
        sums = nll_sums(cfg, nets, test, device=device, batch_size=100 if args.gpu else 50)
        params = sum(p.numel() for net in nets.values() for p in net.parameters())
        rows.append((family, params, done.payload["step"], done.seconds,
                     done.metrics.get("bpd", math.nan), sums.bits_per_dim,
                     time.perf_counter() - t0, cfg.family))
        print(f"  {family}: {done.payload['step']} steps in {done.seconds:.0f}s, "
              f"test {sums.bits_per_dim:.4f} bits/dim", file=sys.stderr, flush=True)

    print(f"\nautoregressive families after {args.seconds:g}s of training each; "
          f"{where(device)}; {args.dataset}, batch {args.batch_size}, seed {args.seed}; exact "
          f"test bits/dim on {len(test)} images")
    print_table(["family", "parameters", "steps", "train s", "train bpd (last interval)",
                 "test bpd", "scoring s"],
                [[family, f"{params:,}", steps, f"{secs:.0f}", f"{train_bpd:.4f}",
                  f"**{test_bpd:.4f}**", f"{score_s:.0f}"]
                 for family, params, steps, secs, train_bpd, test_bpd, score_s, _ in rows],
                right=True)
    for family, *_, fam_cfg in rows:
        print(f"{family}: {fam_cfg}")
    print("command: " + " ".join([Path(sys.executable).name, "-m", "benchmarks.ar_budget",
                                  *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    main()

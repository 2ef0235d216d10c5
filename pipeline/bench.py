"""`genbench bench`: the one-command benchmark (train every family; eval and report follow)."""
from __future__ import annotations

import sys
import time

from pipeline.config import Config

PRESETS = {
    # quick: a few minutes per family on 2 CPU cores
    "quick": {"ae": {"train": {"steps": 300}}, "vae": {"train": {"steps": 300}},
              "gan": {"train": {"steps": 400, "batch_size": 64}},
              "pixelcnn": {"train": {"steps": 200, "batch_size": 32}}},
    "full": {family: {"train": {"epochs": 30}} for family in ("ae", "vae", "gan", "pixelcnn")},
}


def run_bench(args) -> int:
    from pipeline.cli import print_summary
    from pipeline.launch import train

    results = []
    t0 = time.time()
    preset = PRESETS[args.preset]
    for i, (family, overrides) in enumerate(preset.items(), 1):
        print(f"[{i}/{len(preset)}] {family}", file=sys.stderr, flush=True)
        raw = {"model": family, "data": {"dataset": args.dataset},
               "train": {"eval_every": 10**9, **overrides["train"]}}
        cfg = Config.from_dict(raw)
        result = train(cfg, experiment=args.experiment, address=args.address,
                       verbose=args.verbose)
        print_summary(result)
        results.append((family, result))
    print(f"\nbench ({args.preset}) finished in {(time.time() - t0) / 60:.1f} min; "
          f"runs in MLflow experiment {args.experiment!r}:")
    for family, result in results:
        print(f"  {family:<9} {result.run_id}")
    return 0

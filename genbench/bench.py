"""`genbench bench`: the one-command benchmark. Train every family, evaluate each, run a small
beta/lr sweep, measure how training scales with workers, and write the report, all into one fresh
MLflow experiment.

--workers, --gpu and --storage-path apply to every training run and to each sweep trial; the
scaling stage trains one family with each worker count of the preset (on CPU, and on GPU with
--gpu), for the report's scaling table.

Stages that do not depend on each other run at once (genbench/stage_pool.py): as many training
runs as the machine (or cluster) holds, each sized to its share of the CPUs/GPUs, and beside them
the evaluations, each as soon as its run is trained; --parallel 1 runs them one after another.
The scaling stage runs alone (it measures throughput), then the report.

A stage that fails is reported and the rest go on, so the report still shows what worked and
says what is missing; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from genbench import preset_schema
from genbench.options import DATASET_HELP, comma_list, positive_int
from pipeline.errors import ConfigError


PRESET_DIR = Path(__file__).with_name("presets")
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
PRESET_HELP = ("quick (default): about 8 minutes on 2 CPU cores; gpu: about 9 minutes on one "
               "H100/H200 (with --gpu); full: paper-scale, for a GPU cluster; or a YAML file of "
               "the same shape (genbench/presets/quick.yaml)")
# "Can it reject the unseen?": eval --metrics ood on every family's run, one more run per family
# without unseen_classes, and a conditional run of the `bayes` families (likelihood = all with one)
EVERY_LIKELIHOOD = "likelihood"


@dataclass(frozen=True)
class Preset:
    """A bench preset (genbench/presets/<name>.yaml): what every registered family gets, what
    one family gets instead, the evaluation protocol and the sweep. Each section is the dict of
    keys the preset gave, typed by genbench/preset_schema.py."""
    name: str
    every_family: dict                 # FamilyEntry: {"config": {...}, "n_fake": N}
    families: dict                     # family -> the same keys, overriding every_family
    eval: dict                         # EvalSection: EvalOptions fields shared by every family
    sweep: dict | None                 # SweepSection: {"model", "samples", "steps", "config"}
    ood: dict | None = None            # OODSection; None: no OOD or Bayes evaluation
    scaling: dict | None = None        # {"model": family, "workers": [1, 2], "config", "target"}
    order: tuple = ()                  # run names, in the order their training starts

    def needs_domain_classifier(self) -> bool:
        """Its evaluations read the domain classifier: FID features, or the OOD baseline."""
        return "domain" in self.eval.get("extractors", ("domain",)) or bool(self.ood)

    def config(self, family: str, dataset: str, flags: dict | None = None):
        """The config this preset trains `family` with on `dataset`; flags (the command line's
        --workers, --gpu, --storage-path as a config dict) go over it."""
        import copy

        from pipeline.config import Config, merge

        base = copy.deepcopy(self.every_family.get("config") or {})
        over = self.families.get(family, {}).get("config") or {}
        for length, other in (("steps", "epochs"), ("epochs", "steps")):
            if length in over.get("train", {}):  # a family's run length replaces the default's
                base.get("train", {}).pop(other, None)
        # no validation or sample grids mid-run: eval measures the run afterwards
        raw = merge(merge({"train": {"eval_every": 10**9}}, base), over)
        raw = merge(merge(raw, flags or {}), {"model": family, "data": {"dataset": dataset}})
        return Config.from_dict(raw)

    def n_fake(self, family: str) -> int | None:
        return self.families.get(family, {}).get("n_fake", self.every_family.get("n_fake"))


def load_preset(name_or_path: str) -> Preset:
    """A preset by name (genbench/presets/) or a YAML file of the same shape."""
    from pipeline.config import load_yaml
    from pipeline.models import names

    path = Path(name_or_path)
    if not path.suffix:
        if name_or_path not in PRESETS:
            raise ConfigError(f"unknown preset {name_or_path!r}; use {', '.join(PRESETS)} or a "
                              f"YAML file like {PRESET_DIR / 'quick.yaml'}")
        path = PRESET_DIR / f"{name_or_path}.yaml"
    raw = load_yaml(str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {path} must be a mapping of sections "
                          f"({', '.join(preset_schema.SECTIONS)})")
    unknown = set(raw) - set(preset_schema.SECTIONS)
    if unknown:
        raise ConfigError(f"preset {path}: unknown section(s) {', '.join(sorted(unknown))}; use "
                          f"{', '.join(preset_schema.SECTIONS)}")
    families = raw.get("families") or {}
    if not isinstance(families, dict):
        raise ConfigError(f"preset {path}: families must map family names to their settings")
    strangers = set(families) - set(names())
    if strangers:
        raise ConfigError(f"preset {path} names unregistered famil(ies) "
                          f"{', '.join(sorted(strangers))}; registered: {', '.join(names())}")
    # every section through the typed schema (genbench/preset_schema.py): one error style
    every = preset_schema.typed(preset_schema.FamilyEntry, raw.get("every_family"),
                                "every_family", path)
    families = {name: preset_schema.typed(preset_schema.FamilyEntry, entry,
                                          f"families.{name}", path)
                for name, entry in families.items()}
    ev = preset_schema.typed(preset_schema.EvalSection, raw.get("eval"), "eval", path)
    sweep = raw.get("sweep")
    if sweep is not None:
        sweep = preset_schema.typed(preset_schema.SweepSection, sweep, "sweep", path)
    ood = raw.get("ood")
    if ood is not None:
        from eval.ood.sets import SETS
        ood = preset_schema.typed(preset_schema.OODSection, ood, "ood", path)
        bad = set(ood.get("sets") or ()) - set(SETS)
        bad |= set(ood.get("bayes") or ()) - set(names()) - {EVERY_LIKELIHOOD}
        if bad:
            raise ConfigError(f"preset {path}: ood names {', '.join(sorted(map(str, bad)))}; "
                              f"sets are {', '.join(SETS)}, bayes takes family names or "
                              f"{EVERY_LIKELIHOOD}")
    scaling = raw.get("scaling")
    if scaling is not None:
        from genbench.scaling import check_section
        check_section(scaling, path)
    order = preset_schema.run_order(raw.get("order"), path)
    # each name is a family's, or one of its runs' ("vae conditional", "vae seed 0"): a typo
    # would otherwise leave that run at the end of the queue without a word
    strays = [n for n in order if n.split()[0] not in names()]
    if strays:
        raise ConfigError(f"preset {path}: order names {', '.join(map(repr, strays))}, not a "
                          f"registered family or one of its runs; registered: "
                          f"{', '.join(names())}")
    return Preset(path.stem, every, families, ev, sweep, ood, scaling, order)


def in_order(jobs: list[tuple[str, str, dict]], order: tuple[str, ...]
             ) -> list[tuple[str, str, dict]]:
    """The (name, family, more) jobs sorted by the preset's order: by the run's name, else by its
    family's (each seed of a family where the family is named); runs it does not name keep their
    order, after those it names. The evaluations follow the runs one at a time, each as its run
    ends (the bench's longest chain on a small machine): runs whose evaluations take longest go
    first, so that the chain starts early and the last evaluations are short."""
    rank = {name: i for i, name in enumerate(order)}

    def key(job):
        name, family, _ = job
        return rank.get(name, rank.get(family, len(order)))

    return sorted(jobs, key=key)   # stable: the unnamed keep their order


def ood_runs(preset: Preset, families: list[str]) -> list[tuple[str, str, dict]]:
    """(name, family, config additions) of the extra runs the OOD section needs: each family
    without the unseen classes, and a conditional run of each Bayes family."""
    from eval.ood.scores import has_likelihood
    from pipeline.models import FAMILIES

    ood = preset.ood or {}
    out = []
    unseen = list(ood.get("unseen_classes") or [])
    if unseen:
        out += [(f"{family} without class {','.join(map(str, unseen))}", family,
                 {"data": {"exclude_classes": unseen}}) for family in families]
    bayes = ood.get("bayes") or []
    out += [(f"{family} conditional", family, {"train": {"conditional": True}})
            for family in families if (family in bayes or EVERY_LIKELIHOOD in bayes)
            and has_likelihood(FAMILIES[family])]
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quick", metavar="{" + ",".join(PRESETS) + "} or FILE",
                   help=PRESET_HELP)
    p.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    p.add_argument("--gpu", action="store_true", help="train on GPUs (one per worker, nccl, "
                   "bf16) and evaluate on this machine's GPU; exit 2 when neither this machine "
                   "nor the cluster has one")
    p.add_argument("--workers", type=positive_int, metavar="N", help="DDP workers of every "
                   "training run and of each sweep trial (default: the preset's, 1); the scaling "
                   "stage adds this count to its own")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--storage-path", help="where Ray keeps checkpoints and the sweep (default "
                   "./ray_results); shared storage such as s3://... or NFS on multi-node clusters")
    p.add_argument("--inception-weights", metavar="PATH", help="also measure FID/IS/KID/PR with "
                   "Inception features, from this local copy of torch-fidelity's "
                   "weights-inception-2015-12-05-6726825d.pth")
    p.add_argument("--seeds", type=positive_int, default=1, help="train and evaluate each "
                   "family N times, with train.seed 0..N-1 (in the MLflow params and run "
                   "names); the report shows mean ± std and each seed's value (default 1)")
    p.add_argument("--families", type=comma_list, metavar="LIST", help="comma list of the "
                   "families to benchmark (default: the built-in ones, and installed ones that the "
                   "preset names)")
    p.add_argument("--parallel", type=positive_int, metavar="N", help="stages at once: "
                   "training runs (as many as the CPUs/GPUs hold, each with its share) and "
                   "evaluations beside them; 1: one after another (default: the training runs "
                   "that fit, plus one evaluation)")
    p.add_argument("--experiment", help="MLflow experiment (default: a new one, "
                   "bench-<preset>-<date-time>, so runs and reports are never mixed)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (stages, the runs "
                   "each starts, estimated times on this machine) and start nothing")
    from genbench.bench_plan import CONFIRM_ABOVE_S, duration
    p.add_argument("--yes", action="store_true", help=f"run a plan estimated over "
                   f"{duration(CONFIRM_ABOVE_S)} (without it bench stops before starting anything)")
    # SUPPRESS: left unset here, `genbench --verbose CMD` (the top-level flag) holds
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show Ray's own logs")


def flags_config(args) -> dict:
    """--workers, --gpu and --storage-path as a config dict, layered over every run's config."""
    train = {k: v for k, v in (("workers", getattr(args, "workers", None)),
                               ("storage_path", getattr(args, "storage_path", None)))
             if v is not None}
    if getattr(args, "gpu", False):
        train["gpu"] = True
    return {"train": train} if train else {}


def run(args) -> int:
    from genbench import scaling
    from genbench.threads import compute_threads, free_cpus
    from genbench.training import print_summary
    from pipeline.cluster import init_ray, joins_cluster, require_gpu, resolve_resources
    from pipeline.config import Config, merge
    from pipeline.launch import train
    from pipeline.models import is_built_in, names
    from pipeline import tracking
    from pipeline.warm import SlotPool, runs_warm

    # Everything that can be wrong is found before the first stage: one line, exit 2.
    preset = load_preset(args.preset)
    flags = flags_config(args)
    experiment = args.experiment or f"bench-{preset.name}-{datetime.now():%Y%m%d-%H%M%S}"
    # Installed plug-in families join when asked for (--families, or a line in the preset): a
    # package on the machine does not make itself part of every benchmark.
    families = list(getattr(args, "families", None)
                    or [f for f in names() if is_built_in(f) or f in preset.families])
    unknown = [f for f in families if f not in names()]
    if unknown:
        raise ConfigError(f"--families names unregistered famil(ies) {', '.join(unknown)}; "
                          f"registered: {', '.join(names())}")
    seeds = list(range(getattr(args, "seeds", None) or 1))
    configs = {family: preset.config(family, args.dataset, flags) for family in families}
    sweep_cfg = None
    if preset.sweep:
        sweep_cfg = Config.from_dict(merge(merge(
            {"model": preset.sweep["model"], "data": {"dataset": args.dataset},
             "train": {"steps": preset.sweep["steps"]}}, preset.sweep.get("config") or {}),
            flags))
    scaling_cfgs = (scaling.configs(preset.scaling, args.dataset, flags)
                    if preset.scaling else [])
    extra = ood_runs(preset, families)
    for name, family, more in extra:
        configs[name] = Config.from_dict(merge(configs[family].to_dict(), more))
    # each family once per seed (train.seed 0..N-1); the OOD/Bayes extra runs once, at seed 0
    jobs = [(family, family, {}) for family in families] + extra
    if len(seeds) > 1:
        seeded = []
        for family in families:
            for seed in seeds:
                name = f"{family} seed {seed}"
                configs[name] = Config.from_dict(merge(configs[family].to_dict(),
                                                       {"train": {"seed": seed}}))
                seeded.append((name, family, {}))
        jobs = seeded + extra
    jobs = in_order(jobs, preset.order)
    if getattr(args, "inception_weights", None):
        from eval.extractors import inception_weights
        inception_weights(args.inception_weights)  # a wrong file fails now, not after training
    if getattr(args, "gpu", False):
        require_gpu(args.address, args.verbose)   # no GPU: one line, before the plan
    # the plan before anything starts: a days-long preset needs --yes (genbench/bench_plan.py)
    from genbench import bench_plan
    estimate = bench_plan.make_plan(
        preset, jobs, configs, lambda family, more: eval_options(
            None, family, preset, more, getattr(args, "inception_weights", None)),
        sweep_cfg, scaling_cfgs, getattr(args, "gpu", False))
    if not getattr(args, "dry_run", False):
        bench_plan.confirm(estimate, getattr(args, "yes", False))
    print(estimate.describe(f"genbench bench --preset {args.preset}, {args.dataset}"), flush=True)
    if getattr(args, "dry_run", False):
        return 0
    init_ray(args.address, args.verbose)
    first = resolve_resources(next(iter(configs.values())), can_grow=joins_cluster(args.address))
    scaling_cfgs = scaling.fitting(scaling_cfgs)
    # the data, once, before stages start at once: no two threads downloading it together
    from pipeline.launch import load_train_split
    load_train_split(first, with_val=False)
    plan = concurrency(first, next(iter(configs.values())).train.cpus_per_worker,
                       getattr(args, "parallel", None), len(jobs))
    if plan.cpus_per_worker is not None:  # each concurrent run (and sweep trial) gets its share
        share = {"train": {"cpus_per_worker": plan.cpus_per_worker}}
        configs = {k: Config.from_dict(merge(c.to_dict(), share)) for k, c in configs.items()}
        if sweep_cfg is not None:
            sweep_cfg = Config.from_dict(merge(sweep_cfg.to_dict(), share))

    print(f"genbench bench --preset {args.preset}: {', '.join(families)} on {args.dataset}"
          f"{f', seeds 0..{seeds[-1]}' if len(seeds) > 1 else ''}"
          f"{' (GPU)' if getattr(args, 'gpu', False) else ''}; "
          f"MLflow experiment {experiment!r}; {plan.describe()}", file=sys.stderr, flush=True)

    from genbench.stage_pool import StagePool
    stages = StagePool(plan.ray_slots, plan.driver_slots, max_running=plan.parallel,
                       hold_output=plan.parallel > 1)
    quiet = plan.parallel > 1  # no live progress lines: each stage's output comes at its end
    # single-worker CPU runs train in warm processes, one per concurrent run (pipeline/warm.py)
    slots = (SlotPool(plan.ray_slots, plan.cpus_per_worker or first.train.cpus_per_worker,
                      first, tracking.tracking_uri()) if runs_warm(first, None) else None)
    runs: dict[str, str] = {}
    for name, _, _ in jobs:
        def train_one(cfg=configs[name], name=name):
            result = train(cfg, experiment=experiment, address=args.address,
                           verbose=args.verbose, quiet=quiet, warm=slots)
            print_summary(result)
            runs[name] = result.run_id
            return result.run_id

        stages.add(f"train {name}", train_one, kind="ray")

    run_cpus = (plan.cpus_per_worker or first.train.cpus_per_worker) * first.train.workers
    share_cores = plan.parallel > 1 and not joins_cluster(args.address) and not first.train.gpu

    def on_free_cores():
        """An evaluation (or the domain classifier) computes with the cores that the training
        runs beside it leave (genbench/threads.py); on a joined cluster the runs are elsewhere,
        and on a GPU or one stage at a time it has the machine."""
        if not share_cores:
            return nullcontext()
        return compute_threads(free_cpus(stages.running("ray") * run_cpus))

    # The domain classifier (FID features, the OOD baseline) is trained once on a fresh machine,
    # on the evaluations' path: started at once, beside the first training runs, instead of
    # inside the first evaluation, which would wait for its training run first.
    first_eval, prepared = None, set()
    if preset.needs_domain_classifier():
        def prepare_domain(d=first.data):
            from eval.extractors import domain_extractor
            from eval.run import resolve_device
            with on_free_cores():   # on the device the evaluations use (EvalOptions.device)
                domain_extractor(d.dataset, d.root, d.image_size, resolve_device("auto"),
                                 quiet=quiet, epochs=preset.eval.get("domain_epochs"))

        stages.add("domain classifier", prepare_domain, kind="driver")
        prepared.add("domain classifier")
    for name, family, more in jobs:
        def eval_one(name=name, family=family, more=more):
            if name not in runs:
                _missing(f"no trained {name}")
            with on_free_cores():
                return _evaluate(runs[name], family, preset, more,
                                 getattr(args, "inception_weights", None))

        # the first evaluation builds the shared caches (the domain classifier, the OOD sets):
        # the others wait for it rather than build them twice at once
        stages.add(f"eval {name}", eval_one, kind="driver",
                   after={f"train {name}"} | prepared | ({first_eval} if first_eval else set()))
        first_eval = first_eval or f"eval {name}"

    if sweep_cfg is not None:
        def sweep_one():
            from tune.sweep import SweepOptions, sweep
            code = sweep(sweep_cfg, SweepOptions(samples=preset.sweep["samples"],
                                                 experiment=experiment, address=args.address,
                                                 verbose=args.verbose))
            if code != 0:
                raise RuntimeError(f"the sweep ended with exit code {code}")

        stages.add(f"sweep {sweep_cfg.model} ({preset.sweep['samples']} trials)", sweep_one,
                   kind="ray")

    for cfg in scaling_cfgs:  # throughput: measured with nothing else running
        stages.add(f"scaling {scaling.describe(cfg)}",
                   lambda cfg=cfg: scaling.train_one(cfg, experiment, preset.scaling,
                                                     args.address, args.verbose), kind="alone")

    def report():
        from report.render import write_report
        html = write_report(experiment, None, force=False)
        print(f"report: {html}\n        {html.with_name('report.md')}")
        return html

    stages.add("report", report, kind="alone")
    try:
        html = stages.run()["report"]
    finally:
        if slots is not None:
            slots.close()
    minutes = (time.time() - stages.t0) / 60
    print(f"\nbench ({args.preset}) finished in {minutes:.1f} min; MLflow experiment "
          f"{experiment!r}")
    for name, _, _ in jobs:
        if name in runs:
            print(f"  {name:<14} {runs[name]}")
    if html:
        print(f"  report    {html}")
    print_timeline(stages.timeline())
    if stages.failed:
        print(f"genbench: {len(stages.failed)} stage(s) failed: {', '.join(stages.failed)}",
              file=sys.stderr)
        return 1
    return 0


@dataclass(frozen=True)
class Concurrency:
    parallel: int                   # stages at once (1: one after another)
    ray_slots: int                  # training runs (or the sweep) at once
    driver_slots: int               # evaluations at once
    cpus_per_worker: int | None     # each run's share; None: as resolved for one run alone

    def describe(self) -> str:
        if self.parallel == 1:
            return "stages one after another"
        share = (f", {self.cpus_per_worker} CPU(s) per worker" if self.cpus_per_worker
                 else "")
        return (f"up to {self.ray_slots} training run(s) at once{share}, "
                f"{self.driver_slots} evaluation(s) beside them")


def concurrency(resolved, asked_cpus_per_worker: int | None, parallel: int | None,
                n_runs: int) -> Concurrency:
    """How many training runs fit at once on the Ray cluster, and each one's CPUs per worker.
    resolved: a run's config after resolve_resources (its workers, gpu, and the CPUs per worker
    it gets alone); asked_cpus_per_worker: what the preset or flags set (kept as given)."""
    import ray

    t = resolved.train
    total = ray.cluster_resources()
    if t.gpu:
        fit = int(total.get("GPU", 0)) // t.workers
    else:
        fit = int(total.get("CPU", 0)) // (t.workers * (asked_cpus_per_worker or 1))
    fit = max(1, min(fit, n_runs))
    if parallel is None:
        parallel = fit + 1                # the runs that fit, and one evaluation beside them
    if parallel == 1:
        return Concurrency(1, 1, 1, None)
    ray_slots = min(fit, parallel)
    cpus = None
    if asked_cpus_per_worker is None and ray_slots > 1:
        cpus = max(1, t.cpus_per_worker // ray_slots)
    return Concurrency(parallel, ray_slots, max(1, parallel - ray_slots), cpus)


def print_timeline(timeline: list[tuple[str, float, float]]) -> None:
    """Each stage's start and end (seconds from the first stage's start): where they overlapped."""
    if not timeline:
        return
    print("\nstage timeline (s from the start):", file=sys.stderr)
    for name, start, end in sorted(timeline, key=lambda row: row[1]):
        print(f"  {start:7.0f} {end:7.0f}  {name}", file=sys.stderr)
    sys.stderr.flush()


def _missing(why: str):
    raise ConfigError(f"skipped: {why}")


def _evaluate(run_id: str, family: str, preset: Preset, more: dict | None = None,
              inception_weights: str | None = None):
    from eval.run import evaluate, print_report

    result = evaluate(eval_options(run_id, family, preset, more, inception_weights))
    print_report(result)
    return result


def eval_options(run_id: str, family: str, preset: Preset, more: dict | None = None,
                 inception_weights: str | None = None):
    """The preset's evaluation of a family's run (with --metrics ood where the preset has an ood
    section); a run without the unseen classes gets only the unseen set, a conditional one its
    Bayes classifier, its p(x) on the OOD sets, CAS and intra-class FID. inception_weights
    (--inception-weights) adds Inception features to the preset's extractors."""
    from eval.ood.sets import SETS
    from eval.run import DEFAULT_METRICS, EvalOptions

    ood = preset.ood or {}
    more = more or {}
    ev = dict(preset.eval)
    if inception_weights:
        ev["extractors"] = tuple(dict.fromkeys((*ev.get("extractors", ("domain",)), "inception")))
        ev["inception_weights"] = inception_weights
    sets = tuple(s for s in ood.get("sets") or () if s != "unseen")
    kw = {k: ood[key] for k, key in (("ood_images", "images"), ("bayes_images", "bayes_images"),
                                     ("ood_background_steps", "background_steps")) if key in ood}
    for key in ("k", "domain_epochs"):  # the same bound and the same domain classifier
        if key in preset.eval:
            kw[key] = preset.eval[key]
    if "exclude_classes" in more.get("data", {}):
        opts = EvalOptions(run_id=run_id, metrics=("ood",), ood_sets=("unseen",), **kw)
    elif more.get("train", {}).get("conditional"):
        per_class = ("cas", "intra_fid")  # sample quality per class: only a conditional run
        opts = EvalOptions(run_id=run_id, metrics=("bayes", "ood", *per_class) if sets
                           else ("bayes", *per_class),
                           ood_sets=sets or SETS, **{**kw, "ood_background_steps": 0})
    else:
        opts = EvalOptions(run_id=run_id, n_fake=preset.n_fake(family), **ev,
                           metrics=DEFAULT_METRICS + (("ood",) if sets else ()),
                           ood_sets=sets or SETS,
                           **{k: v for k, v in kw.items() if k not in ev})
    opts.validate()
    return opts

"""A sweep: validate, open the sweep's parent MLflow run, run (or restore) a Tuner over the
training loop, then write the results table, best config and plots into the parent run.

Everything that can be checked before trials start is checked first (config, search space,
metric, data, cluster resources), so bad input is one line and exit code 2.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from pipeline import schema, tracking
from pipeline.config import Config
from pipeline.data import ImageData
from pipeline.errors import ConfigError
from pipeline.launch import load_train_split
from tune import metrics as sweep_metrics
from tune import spaces
from tune.spec import (MARKER_FILE, RESOURCE_STEPS, SPEC_FILE, SweepSpec, gpu_share,
                       read_marker, write_marker)

TUNE_PATH_TAG = schema.TUNE_PATH   # on the parent run: its sweep directory
SWEEP_ID_TAG = schema.SWEEP_ID     # on the parent run: the id in the directory's marker
REPORTS_PER_TRIAL = 10             # metric (and checkpoint) interval = steps / this, at most
FID_SAMPLES = 500                  # images per small-sample FID (fake and real each)


# --- building the sweep ------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepOptions:
    """How to search, beside the config every trial starts from (its train.steps and
    train.workers are the trial length and the DDP workers per trial)."""
    samples: int = 8
    scheduler: str = "asha"                  # asha | fifo
    search: str = "random"                   # random | optuna
    metric: str | None = None                # default: the family's SWEEP_METRIC
    mode: str | None = None                  # min | max; default from the metric
    space: dict | None = None                # {dotted key: {primitive: args}}; default: family's
    experiment: str = "genbench"
    address: str | None = None
    verbose: bool = False
    trials_per_gpu: int = 1                  # single-worker GPU trials sharing one GPU


def trial_config(cfg: Config, steps: int, interval: int) -> Config:
    """The config each trial trains: fixed step count, and metrics, validation and checkpoints
    at the same interval, so every report carries the sweep metric and a checkpoint."""
    t = dataclasses.replace(cfg.train, steps=steps, epochs=None, log_every=interval,
                            eval_every=interval, checkpoint_every=interval,
                            cpus_per_worker=cfg.train.cpus_per_worker or 1)
    return dataclasses.replace(cfg, train=t)


def check_trials_per_gpu(cfg: Config, trials_per_gpu: int) -> None:
    """--trials-per-gpu N > 1 shares a GPU between trials that each train in one process; a
    multi-worker trial's DDP ranks each hold a whole GPU (Ray Train asks for them)."""
    if trials_per_gpu == 1:
        return
    if not 1 <= trials_per_gpu <= RESOURCE_STEPS:
        raise ConfigError(f"--trials-per-gpu must be from 1 to {RESOURCE_STEPS}, got "
                          f"{trials_per_gpu}")
    if not cfg.train.gpu:
        raise ConfigError(f"--trials-per-gpu {trials_per_gpu} shares a GPU between trials, but "
                          f"the trials train on CPUs; add --gpu or drop --trials-per-gpu")
    if cfg.train.workers != 1:
        raise ConfigError(f"--trials-per-gpu {trials_per_gpu} shares a GPU between single-worker "
                          f"trials, but each trial has {cfg.train.workers} workers; use "
                          f"--workers-per-trial 1 or drop --trials-per-gpu")


def trial_shortfall(trial_cfg: Config, total: dict, trials_per_gpu: int) -> str | None:
    """What the cluster lacks for one trial (launch's check, as for `genbench train`), with a
    trial that shares a GPU counted by its share: launch counts whole GPUs per worker."""
    from pipeline.cluster import shortfall

    if not (trial_cfg.train.gpu and trials_per_gpu > 1):
        return shortfall(trial_cfg, total, workers_flag="--workers-per-trial")
    gpus = total.get("GPU", 0)
    if gpu_share(trials_per_gpu) > gpus:
        return (f"1/{trials_per_gpu} of a GPU asked for but the Ray cluster has {gpus:g} GPUs; "
                f"add GPU nodes or drop --gpu")
    return None


def gpu_slots(gpus: float, workers: int, trials_per_gpu: int) -> int:
    """Trials whose GPUs fit in the cluster's declared GPUs at once, counted in Ray's resource
    steps as Ray does: their shares never add up to more GPUs than the cluster declares."""
    per_trial = workers * round(gpu_share(trials_per_gpu) * RESOURCE_STEPS)
    return round(gpus * RESOURCE_STEPS) // per_trial


def concurrency(trial_cfg: Config, trials_per_gpu: int = 1) -> int:
    """How many trials fit the cluster at once; a request that can never fit is an error."""
    import ray

    from pipeline.cluster import require_shared_storage

    t = trial_cfg.train
    total = ray.cluster_resources()
    short = trial_shortfall(trial_cfg, total, trials_per_gpu)
    if short:
        raise ConfigError(f"each trial: {short}")
    require_shared_storage(trial_cfg)
    fit = int(total.get("CPU", 0)) // (t.workers * t.cpus_per_worker)
    if t.gpu:
        fit = min(fit, gpu_slots(total.get("GPU", 0), t.workers, trials_per_gpu))
    return max(1, fit)


def scheduler_and_search(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.scheduler == "asha":
        # time in steps; rungs at grace * 2^k: with 4-8 samples a factor of 2 still prunes.
        scheduler = ASHAScheduler(time_attr="step", max_t=spec.steps,
                                  grace_period=max(spec.interval, spec.steps // 4),
                                  reduction_factor=2)
    else:
        scheduler = FIFOScheduler()
    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        search = OptunaSearch(seed=spec.seed)
    else:
        # Tune ignores max_concurrent_trials for a generator passed in: give it here.
        search = BasicVariantGenerator(random_state=spec.seed,
                                       max_concurrent=spec.max_concurrent)
    return scheduler, search


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


# --- the command -------------------------------------------------------------------------------
def sweep(cfg: Config, options: SweepOptions) -> int:
    """Run a sweep of cfg's family; returns the exit code (0 when a best trial exists)."""
    from pipeline.cluster import init_ray

    spec, train_data, val_data = plan(cfg, options)
    init_ray(options.address, options.verbose)
    spec = open_sweep(spec.replace(max_concurrent=concurrency(spec.trial(),
                                                              spec.trials_per_gpu)))

    from ray import tune

    from tune.monitor import SweepMonitor
    from tune.trial import make_trainable

    scheduler, search = scheduler_and_search(spec)
    tuner = tune.Tuner(
        make_trainable(spec, train_data, val_data),
        param_space=spaces.to_tune(spec.space),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode,
                                    scheduler=scheduler, search_alg=search,
                                    num_samples=spec.samples,
                                    max_concurrent_trials=spec.max_concurrent,
                                    # a fresh trial process costs seconds of imports
                                    reuse_actors=spec.workers == 1,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=spec.name,
                                  storage_path=str(Path(spec.sweep_dir).parent),
                                  verbose=0, callbacks=[SweepMonitor(spec)],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=0)))
    space_text = ", ".join(f"{k} {prim}{bounds}" for k, e in spec.space.items()
                           for prim, bounds in e.items())
    share = f", 1/{spec.trials_per_gpu} GPU" if spec.trials_per_gpu > 1 else ""
    print(f"genbench: sweeping {spec.model} on {spec.dataset}: {spec.samples} trials "
          f"x {spec.steps} steps ({spec.workers} worker(s){share} each, {spec.max_concurrent} "
          f"at a time), {spec.scheduler.upper()} on {spec.metric} ({spec.mode}) every "
          f"{spec.interval} steps, {spec.search} search over {space_text}\n"
          f"  MLflow parent run {spec.parent_run_id}; sweep dir {spec.sweep_dir}",
          file=sys.stderr, flush=True)
    return finish(tuner, spec)


def plan(cfg: Config, options: SweepOptions) -> tuple[SweepSpec, ImageData, ImageData | None]:
    """Everything checkable before Ray starts and a run is opened: search space, data, metric,
    step count; returns the sweep's spec and the data splits."""
    from pipeline.loop import total_steps

    if options.samples <= 0:
        raise ConfigError(f"--samples must be positive, got {options.samples}")
    check_trials_per_gpu(cfg, options.trials_per_gpu)
    space = spaces.check_space(spaces.default_space(cfg.model) if options.space is None
                               else options.space, cfg)
    train_data, val_data = load_train_split(cfg)
    metric, mode = sweep_metrics.choose(cfg, train_data, options.metric, options.mode)
    steps = total_steps(cfg, len(train_data) // cfg.train.batch_size)
    interval = max(1, min(cfg.train.eval_every, steps // REPORTS_PER_TRIAL))
    trial_cfg = trial_config(cfg, steps, interval)
    spec = SweepSpec(user_config=cfg.to_dict(), trial_config=trial_cfg.to_dict(), space=space,
                     metric=metric,
                     mode=mode, scheduler=options.scheduler, search=options.search,
                     samples=options.samples, steps=steps, interval=interval,
                     experiment=options.experiment, tracking_uri=tracking.tracking_uri(),
                     fid_samples=FID_SAMPLES, trials_per_gpu=options.trials_per_gpu,
                     **sweep_metrics.prepare(trial_cfg))
    return spec, train_data, val_data


def open_sweep(spec: SweepSpec) -> SweepSpec:
    """The parent MLflow run and the sweep directory (named after it, so never reused), with
    the spec that --resume reads back."""
    from pipeline.trainer import storage_path

    cfg = spec.user()
    tags = tracking.versions_and_hardware(cfg.train.gpu)
    tags.update({schema.KIND: schema.TUNE, schema.MODEL: cfg.model,
                 schema.DATASET: cfg.data.dataset})
    params = {**cfg.flat(), "train.total_steps": spec.steps,
              **{f"tune.{k}": getattr(spec, k) for k in ("samples", "scheduler", "search",
                                                         "metric", "mode", "interval",
                                                         "workers", "trials_per_gpu")},
              "tune.space": json.dumps(spec.space)}
    parent = tracking.start_run(spec.experiment, f"tune-{cfg.model}-{cfg.data.dataset}",
                                params, tags)
    name = f"tune-{cfg.model}-{parent[:12]}"
    sweep_dir = Path(storage_path(cfg)) / name
    spec = spec.replace(parent_run_id=parent, name=name, sweep_dir=str(sweep_dir))
    sweep_dir.mkdir(parents=True, exist_ok=False)
    write_marker(sweep_dir, parent)   # what --resume checks against the parent run's tags
    spec.save(sweep_dir)
    tracking.set_tags(parent, {TUNE_PATH_TAG: str(sweep_dir), SWEEP_ID_TAG: parent})
    return spec


def trusted_sweep(path: str) -> tuple[Path, str]:
    """The sweep directory and its id, when genbench wrote it for a parent run in the user's
    tracking store; else a one-line error. Tune.restore unpickles state from the directory,
    so it must come from a sweep this user ran, not be copied from elsewhere. Reads nothing
    but the marker, before the spec, Tune's state or Ray."""
    sweep_dir = Path(path).absolute()
    if not (sweep_dir / SPEC_FILE).is_file():
        raise ConfigError(f"{path} is not a genbench sweep directory (no {SPEC_FILE}); pass the "
                          f"sweep dir that `genbench tune` printed")
    sweep_id = read_marker(sweep_dir)
    uri = tracking.tracking_uri()   # the user's own store, never one the directory names
    if sweep_id is None:
        raise ConfigError(f"{path} has no {MARKER_FILE} marker, so genbench did not start this "
                          f"sweep here; --resume restores Ray Tune's pickled state from the "
                          f"directory: resume only sweeps you ran yourself, or start it again")
    try:
        parent = tracking.client(uri).get_run(sweep_id)
    except Exception:
        parent = None
    tags = parent.data.tags if parent is not None else {}
    if schema.kind(tags) != schema.TUNE or tags.get(SWEEP_ID_TAG) != sweep_id:
        raise ConfigError(f"{path} names sweep {sweep_id}, which is not a sweep's parent run in "
                          f"your tracking store {uri}; --resume restores Ray Tune's pickled "
                          f"state from the directory: resume only sweeps you ran yourself, "
                          f"with the MLFLOW_TRACKING_URI they were started with")
    recorded = tags.get(TUNE_PATH_TAG, "")
    if not recorded or Path(recorded).resolve() != sweep_dir.resolve():
        raise ConfigError(f"sweep {sweep_id} ran in {recorded or 'an unrecorded directory'}, "
                          f"not {sweep_dir}; resume it from the directory it ran in")
    return sweep_dir, sweep_id


def resume(path: str, address: str | None = None, verbose: bool = False) -> int:
    """Continue an interrupted sweep from its directory, without re-running finished trials;
    trials that ended in error (e.g. a tracking outage) run again from their last checkpoint."""
    from ray import tune

    from pipeline.cluster import init_ray
    from tune.trial import make_trainable

    sweep_dir, sweep_id = trusted_sweep(path)
    spec = SweepSpec.load(sweep_dir)   # its configs pass Config.from_dict's checks again
    uri = tracking.tracking_uri()
    if spec.parent_run_id != sweep_id or spec.tracking_uri != uri:
        raise ConfigError(f"{path}: its {SPEC_FILE} does not match sweep {sweep_id} in {uri}; "
                          f"start the sweep again")
    if not tune.Tuner.can_restore(str(sweep_dir)):
        raise ConfigError(f"sweep {path} stopped before Tune saved any state; start it again "
                          f"without --resume")
    parent = tracking.client(uri).get_run(sweep_id)
    errored = errored_trials(sweep_dir)
    if parent.info.status == "FINISHED" and not errored:
        raise ConfigError(f"sweep {path} already finished; see MLflow run "
                          f"{spec.parent_run_id}")
    trial_cfg = spec.trial()
    train_data, val_data = load_train_split(trial_cfg)
    init_ray(address, verbose)
    concurrency(trial_cfg, spec.trials_per_gpu)
    spec = spec.replace(**sweep_metrics.prepare(trial_cfg))
    tracking.client(uri).update_run(spec.parent_run_id, status="RUNNING")
    rerun = f", {errored} errored trial(s) rerun" if errored else ""
    print(f"genbench: resuming sweep {sweep_dir.name} from {sweep_dir} ({spec.samples} trials "
          f"of {spec.model}{rerun}; MLflow parent run {spec.parent_run_id}): Ray Tune restores "
          f"pickled state from this directory; resume only sweeps you ran yourself",
          file=sys.stderr, flush=True)
    # resume_errored: errored trials continue from their last checkpoint (restart_errored
    # would start them from step 0 and log their steps again)
    tuner = tune.Tuner.restore(str(sweep_dir), make_trainable(spec, train_data, val_data),
                               resume_unfinished=True, resume_errored=True)
    return finish(tuner, spec)


def errored_trials(sweep_dir: Path) -> int:
    """Trials of a saved sweep that ended in error."""
    from ray.tune import ExperimentAnalysis

    return sum(t.status == "ERROR" for t in ExperimentAnalysis(str(sweep_dir)).trials)


def finish(tuner, spec: SweepSpec) -> int:
    """Fit, then either hand back an interrupted sweep or write its results."""
    import os

    from ray.tune import ExperimentAnalysis

    from tune import summary

    parent, uri = spec.parent_run_id, spec.tracking_uri
    # Tune's newer console output prints a banner even at verbose=0; the classic one is silent
    # there, and SweepMonitor prints our own compact progress instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune swaps in its own Ctrl-C handler (a flag it polls) and leaves it after fit(): put the
    # caller's back, or the next Ctrl-C in this process would be swallowed
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        results = tuner.fit()
    except BaseException as exc:
        mark_unfinished(spec)
        tracking.end_run(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED",
                         uri)
        raise
    finally:
        if threading.current_thread() is threading.main_thread() and ctrl_c is not None:
            signal.signal(signal.SIGINT, ctrl_c)
    # Tune returns normally on Ctrl-C too; the state it saved says whether every trial ended.
    saved = ExperimentAnalysis(spec.sweep_dir).trials
    ended = sum(t.status in ("TERMINATED", "ERROR") for t in saved)
    if ended < spec.samples:
        mark_unfinished(spec)
        tracking.end_run(parent, "KILLED", uri)
        print(f"genbench: sweep interrupted with {ended}/{spec.samples} trials done; "
              f"continue it with: genbench tune --resume {spec.sweep_dir}", file=sys.stderr)
        return 130
    rows = summary.collect(results, parent, uri)
    out = summary.write_all(rows, spec, Path(spec.sweep_dir))
    print_results(rows, spec, out)
    failed = sum(t.status == "ERROR" for t in saved)
    if failed:
        print(f"genbench: {failed} trial(s) ended in error; rerun them from their last "
              f"checkpoint with: genbench tune --resume {spec.sweep_dir}", file=sys.stderr)
    best = out["best"]
    tracking.end_run(parent, "FINISHED" if best is not None else "FAILED", uri)
    return 0 if best is not None else 1


def mark_unfinished(spec: SweepSpec) -> None:
    """Child runs still open when the driver stops are interrupted, not finished."""
    from tune.trial import STATUS_TAG

    uri = spec.tracking_uri
    for run in tracking.child_runs(spec.parent_run_id, uri):
        if run.info.status == "RUNNING":
            tracking.set_tags(run.info.run_id, {STATUS_TAG: "interrupted"}, uri)
            tracking.end_run(run.info.run_id, "KILLED", uri)


def print_results(rows, spec: SweepSpec, out: dict) -> None:
    from tune.monitor import fmt

    metric, keys = spec.metric, spec.keys
    header = ["trial", "status", "steps", metric, *keys]
    table = [[r.trial, r.status.replace("_", "-"),
              str(r.metrics.get("step", "-")), fmt(r.value(metric)),
              *(fmt(r.sampled.get(k)) for k in keys)] for r in rows]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    print(f"\nsweep {spec.name}: {len(rows)} trials")
    for row in [header, *table]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
    best = out["best"]
    if best is None:
        print(f"  no trial reported a finite {metric}; see the errors under {spec.sweep_dir}")
        return
    print(f"\nbest: trial {best.trial} with {metric} {best.value(metric):.6g}: "
          + ", ".join(f"{k}={fmt(best.sampled.get(k))}" for k in keys))
    print(f"  best config   {out['best_config']}")
    print(f"  train it      genbench train --config {out['best_config']}")
    print(f"  MLflow run    {spec.parent_run_id} (parent; {len(rows)} child runs, "
          f"{spec.tracking_uri})")


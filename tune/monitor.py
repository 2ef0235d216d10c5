"""Driver side of a sweep, as a Tune callback: closes each trial's MLflow run with its final
status (completed, early-stopped by the scheduler, failed) and prints compact progress (a line
per trial start and end, a table of live trials every TABLE_EVERY seconds) while Tune is silent.

Tune pickles this callback into the experiment (Tuner.restore brings it back), so it holds plain
data only and writes to sys.stderr at call time.
"""
from __future__ import annotations

import functools
import math
import sys
import time

from ray.tune import Callback

from pipeline import tracking
from tune.spec import SweepSpec
from tune.trial import PLACEMENT_GROUP_KEY, STATUS_TAG, TRIAL_ID_TAG

TABLE_EVERY = 30.0  # seconds between live tables


def never_raises(hook):
    """A monitoring failure (e.g. a busy MLflow store) is reported, never stops the sweep:
    Tune ends the whole experiment when a callback raises."""
    @functools.wraps(hook)
    def wrapped(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - logged, the sweep goes on
            print(f"genbench: warning: {hook.__name__} failed ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''})", file=sys.stderr, flush=True)
    return wrapped


def trial_label(trial, trials) -> str:
    """#1, #2, ... in the order Tune created the trials (ids are random with a searcher)."""
    return f"#{next((i for i, t in enumerate(trials, 1) if t is trial), '?')}"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def release_placement_group(result: dict) -> None:
    """Remove a stopped multi-worker trial's placement group (see trial.PLACEMENT_GROUP_KEY);
    a group its trainer already removed is left as it is."""
    pg_hex = result.get(PLACEMENT_GROUP_KEY)
    if not pg_hex:
        return
    from ray.util import placement_group_table
    from ray.util.placement_group import remove_placement_group

    from pipeline.ray_private import placement_group

    if placement_group_table().get(pg_hex, {}).get("state") in (None, "REMOVED"):
        return
    group = placement_group(pg_hex)
    if group is None:
        return
    try:
        remove_placement_group(group)
    except Exception:  # removed meanwhile by its trainer
        pass


def final_status(last_result: dict, steps: int) -> str:
    """A trial Tune stopped before its last step was stopped by the scheduler."""
    return "completed" if int(last_result.get("step", 0)) >= steps else "early_stopped"


class SweepMonitor(Callback):
    def __init__(self, spec: SweepSpec):
        # plain data only: Tune pickles this callback into the experiment state
        self.spec = {k: getattr(spec, k) for k in ("parent_run_id", "tracking_uri", "steps",
                                                   "metric", "samples", "keys")}
        self.started: dict[str, float] = {}
        self.last_table = time.time()

    # --- Tune hooks ---------------------------------------------------------------------------
    @never_raises
    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        values = " ".join(f"{k}={fmt(trial.config.get(k))}" for k in self.spec["keys"])
        self._print(f"  {trial_label(trial, trials)} started: {values}")

    @never_raises
    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        release_placement_group(result)
        status = final_status(result, self.spec["steps"])
        self._close(trial, status, "FINISHED" if status == "completed" else "KILLED")
        word = "completed" if status == "completed" else "early-stopped"
        metric = self.spec["metric"]
        self._print(f"  {trial_label(trial, trials)} {word} at step "
                    f"{result.get('step', 0)}/{self.spec['steps']}: {metric} "
                    f"{fmt(result.get(metric, float('nan')))} "
                    f"({self._done(trials, trial)}/{self.spec['samples']} done)")

    @never_raises
    def on_trial_error(self, iteration, trials, trial, **info):
        release_placement_group(trial.last_result or {})
        self._close(trial, "failed", "FAILED")
        self._print(f"  {trial_label(trial, trials)} failed; its error is in "
                    f"{trial.local_path}/error.txt ({self._done(trials, trial)}/"
                    f"{self.spec['samples']} done)")

    @never_raises
    def on_step_end(self, iteration, trials, **info):
        if time.time() - self.last_table < TABLE_EVERY:
            return
        self.last_table = time.time()
        live = [t for t in trials if t.status == "RUNNING"]
        if live:
            self._print(self.table(live, trials))

    # --- helpers ------------------------------------------------------------------------------
    def table(self, live, trials) -> str:
        metric, keys = self.spec["metric"], self.spec["keys"]
        header = ["trial", "status", "step", metric, *keys]
        rows = [[trial_label(t, trials), t.status.lower(),
                 f"{(t.last_result or {}).get('step', 0)}/{self.spec['steps']}",
                 fmt((t.last_result or {}).get(metric, "-")),
                 *(fmt(t.config.get(k)) for k in keys)] for t in live]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("    " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
                         for r in [header, *rows])

    @staticmethod
    def _done(trials, trial) -> int:
        """Trials ended, counting this one (Tune updates its status after the callback)."""
        return 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)

    def _close(self, trial, status: str, mlflow_status: str) -> None:
        uri = self.spec["tracking_uri"]
        for run in tracking.child_runs(self.spec["parent_run_id"], uri):
            if run.data.tags.get(TRIAL_ID_TAG) == trial.trial_id:
                tags = {STATUS_TAG: status}
                if trial.trial_id in self.started:
                    seconds = time.time() - self.started[trial.trial_id]
                    logger = tracking.RunLogger(run.info.run_id, uri)
                    logger.metrics({"trial_seconds": seconds},
                                   int((trial.last_result or {}).get("step", 0)))
                    logger.close()  # the writer is asynchronous: written before the run ends
                tracking.set_tags(run.info.run_id, tags, uri)
                tracking.end_run(run.info.run_id, mlflow_status, uri)

    @staticmethod
    def _print(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

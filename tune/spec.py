"""SweepSpec: everything a sweep's driver and its trials need, saved as JSON in the sweep
directory so that `genbench tune --resume DIR` continues with exactly the same settings."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import ConfigError

SPEC_FILE = "genbench_sweep.json"  # in the Tune experiment directory
# Beside it: the sweep's id (its MLflow parent run id), written when genbench opens the sweep.
# `--resume` trusts a directory only when this id names a parent run in the user's tracking
# store that points back at the directory (tune/sweep.py): Tune restores pickled state from it.
MARKER_FILE = "genbench_sweep.id"
# Ray counts a resource in steps of 1/10000 and cuts finer fractions off: a GPU share is rounded
# down to such a step, so that trials_per_gpu shares never add up to more than one GPU.
RESOURCE_STEPS = 10_000


@dataclass(frozen=True)
class SweepSpec:
    """Configs are held as dicts (Config.to_dict()) and rebuilt with Config.from_dict, which
    checks them again wherever they are read: a spec read back by --resume is data from a
    directory, and a config in it that names code to import is refused."""
    user_config: dict            # the config as the user gave it (best_config.yaml builds on it)
    trial_config: dict           # what every trial trains before its sampled values
    space: dict                  # {dotted config key: {primitive: [args]}}, checked
    metric: str
    mode: str                    # min | max
    scheduler: str               # asha | fifo
    search: str                  # random | optuna
    samples: int                 # trials
    steps: int                   # per trial
    interval: int                # steps between reports (metric + checkpoint)
    experiment: str              # MLflow experiment
    tracking_uri: str
    fid_samples: int             # images per small-sample FID, fake and real each
    domain_cache: str | None = None   # where the FID's extractor is cached, for trial processes
    max_concurrent: int = 1
    # single-worker GPU trials sharing one GPU (--trials-per-gpu); 1 in specs saved before it
    trials_per_gpu: int = 1
    # set when the sweep opens its parent MLflow run
    parent_run_id: str = ""
    name: str = ""
    sweep_dir: str = ""

    def user(self) -> Config:
        return Config.from_dict(self.user_config)

    def trial(self) -> Config:
        return Config.from_dict(self.trial_config)

    @property
    def model(self) -> str:
        return self.user_config["model"]

    @property
    def dataset(self) -> str:
        return self.user_config["data"]["dataset"]

    @property
    def keys(self) -> list[str]:
        return list(self.space)

    @property
    def workers(self) -> int:
        return self.trial_config["train"]["workers"]

    @property
    def seed(self) -> int:
        return self.trial_config["train"]["seed"]

    def replace(self, **changes) -> "SweepSpec":
        return dataclasses.replace(self, **changes)

    # --- JSON ------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "SweepSpec":
        raw = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or set(raw) - names:
            raise ConfigError(f"this sweep was saved by another genbench version (unknown "
                              f"fields {', '.join(sorted(set(raw) - names))}); start it again")
        try:
            spec = cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"this sweep's saved settings are incomplete ({exc}); start it "
                              f"again") from None
        spec.user(), spec.trial()  # still valid configs for this genbench
        if type(spec.trials_per_gpu) is not int or not 1 <= spec.trials_per_gpu <= RESOURCE_STEPS:
            raise ConfigError(f"this sweep's saved trials_per_gpu {spec.trials_per_gpu!r} is not "
                              f"a whole number from 1 to {RESOURCE_STEPS}; start it again")
        return spec

    def save(self, sweep_dir: Path) -> None:
        (sweep_dir / SPEC_FILE).write_text(self.to_json())

    @classmethod
    def load(cls, sweep_dir: Path) -> "SweepSpec":
        return cls.from_json((sweep_dir / SPEC_FILE).read_text())


def gpu_share(trials_per_gpu: int) -> float:
    """1/trials_per_gpu of a GPU, in Ray's steps (1 stays a whole GPU)."""
    return math.floor(RESOURCE_STEPS / trials_per_gpu) / RESOURCE_STEPS


def write_marker(sweep_dir: Path, sweep_id: str) -> None:
    (sweep_dir / MARKER_FILE).write_text(sweep_id + "\n")


def read_marker(sweep_dir: Path) -> str | None:
    """The sweep id in the directory's marker, or None when there is none (or it is not one
    line of id characters)."""
    path = sweep_dir / MARKER_FILE
    if not path.is_file() or path.stat().st_size > 200:
        return None
    text = path.read_text(errors="replace").strip()
    return text if text and text.isalnum() else None

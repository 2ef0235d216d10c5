"""SweepSpec: everything a sweep's driver and its trials need, saved as JSON in the sweep
directory so that `genbench tune --resume DIR` continues with exactly the same settings."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import ConfigError

SPEC_FILE = "genbench_sweep.json"  # in the Tune experiment directory


@dataclass(frozen=True)
class SweepSpec:
    """Configs are held as dicts (Config.to_dict()): trial processes unpickle the spec before
    they can know a family registered outside pipeline/models/; Config.from_dict, called in the
    trial, imports it (see pipeline/models/__init__.py)."""
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
        return spec

    def save(self, sweep_dir: Path) -> None:
        (sweep_dir / SPEC_FILE).write_text(self.to_json())

    @classmethod
    def load(cls, sweep_dir: Path) -> "SweepSpec":
        return cls.from_json((sweep_dir / SPEC_FILE).read_text())

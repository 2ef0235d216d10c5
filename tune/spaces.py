"""Search spaces: the family's TUNE_SPACE by default, or a YAML `tune:` section written with
Tune's sampling primitives, checked before any trial starts.

A space maps a dotted config key to a primitive, e.g.

    tune:
      vae.beta: {loguniform: [0.1, 10]}
      vae.lr: {choice: [1.0e-3, 3.0e-4]}

A `tune:` section replaces the family's default space (so a key left out keeps its config value).
"""
from __future__ import annotations

import math
from typing import Any

from pipeline.config import Config, merge
from pipeline.errors import ConfigError
from pipeline.models import FAMILIES

# primitive -> number of bound arguments it takes (choice takes a list of any length)
PRIMITIVES = {"uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3,
              "randint": 2, "lograndint": 2, "qrandint": 3, "choice": None}
LOG_PRIMITIVES = ("loguniform", "qloguniform", "lograndint")
EXAMPLE = "e.g. tune: {vae.beta: {loguniform: [0.1, 10]}}"


def default_space(model: str) -> dict[str, dict]:
    """The family's TUNE_SPACE as dotted config keys ({"lr": ...} -> {"<model>.lr": ...})."""
    return {f"{model}.{k}": {p: list(a) for p, a in v.items()}
            for k, v in FAMILIES[model].TUNE_SPACE.items()}


def check_space(spec: Any, base: Config) -> dict[str, dict]:
    """Validate a space spec against the config it will be applied to; returns it normalised
    ({key: {primitive: [numbers]}}). Raises ConfigError naming the first problem."""
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"the search space is empty; give at least one hyperparameter, "
                          f"{EXAMPLE}")
    out = {}
    for key, entry in spec.items():
        _check_key(str(key), base)
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"tune.{key} must be one sampling primitive, {EXAMPLE} "
                              f"(primitives: {', '.join(PRIMITIVES)})")
        (prim, args), = entry.items()
        if prim not in PRIMITIVES:
            raise ConfigError(f"tune.{key}: unknown sampling primitive {prim!r}; use one of "
                              f"{', '.join(PRIMITIVES)}")
        out[str(key)] = {prim: _check_args(str(key), prim, args)}
    for values in _corners(out):  # every bound must give a valid config
        try:
            apply(base, values)
        except ConfigError as exc:
            raise ConfigError(f"search space gives an invalid config: {exc}") from None
    return out


def _check_key(key: str, base: Config) -> None:
    flat = base.flat()
    if key not in flat or key == "model" or key.startswith("data."):
        tunable = [k for k in flat if k.startswith(f"{base.model}.") or k.startswith("train.")]
        raise ConfigError(f"tune: unknown hyperparameter {key!r} for model {base.model}; "
                          f"use a config key such as {', '.join(tunable[:6])}")


def _number(key: str, value) -> float:
    try:  # YAML reads 1e-3 (no dot) as a string
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"tune.{key}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"tune.{key}: bounds must be finite, got {value!r}")
    return number


def _check_args(key: str, prim: str, args) -> list:
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"tune.{key}.{prim} takes a list, e.g. {{{prim}: "
                          f"{'[1.0e-3, 3.0e-4]' if prim == 'choice' else '[lower, upper]'}}}")
    if prim == "choice":
        return [_maybe_number(v) for v in args]
    if len(args) != PRIMITIVES[prim]:
        names = "[lower, upper]" if PRIMITIVES[prim] == 2 else "[lower, upper, q]"
        raise ConfigError(f"tune.{key}.{prim} takes {names}, got {list(args)}")
    nums = [_number(key, v) for v in args]
    if "randint" in prim:
        if any(not n.is_integer() for n in nums):
            raise ConfigError(f"tune.{key}.{prim} takes whole numbers, got {list(args)}")
        nums = [int(n) for n in nums]
    lower, upper = nums[0], nums[1]
    if not lower < upper:
        raise ConfigError(f"tune.{key}.{prim}: lower bound {lower} must be below upper "
                          f"bound {upper}")
    if prim in LOG_PRIMITIVES and lower <= 0:
        raise ConfigError(f"tune.{key}.{prim}: a log scale needs a lower bound above 0, "
                          f"got {lower}")
    if len(nums) == 3 and nums[2] <= 0:
        raise ConfigError(f"tune.{key}.{prim}: the step q must be positive, got {nums[2]}")
    return nums


def _maybe_number(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _corners(space: dict[str, dict]):
    """Each key at its lower bound, then each at its upper bound (one config per choice)."""
    lows, highs, choices = {}, {}, []
    for key, entry in space.items():
        (prim, args), = entry.items()
        if prim == "choice":
            choices += [(key, v) for v in args]
            lows[key] = highs[key] = args[0]
        else:
            # randint's upper bound is exclusive
            lows[key], highs[key] = args[0], args[1] - 1 if "randint" in prim else args[1]
    yield lows
    yield highs
    for key, value in choices:
        yield {**lows, key: value}


def to_tune(space: dict[str, dict]) -> dict:
    """The normalised spec as Tune domains ({'vae.beta': tune.loguniform(0.1, 10), ...})."""
    from ray import tune

    out = {}
    for key, entry in space.items():
        (prim, args), = entry.items()
        out[key] = tune.choice(list(args)) if prim == "choice" else getattr(tune, prim)(*args)
    return out


def is_log(space: dict[str, dict], key: str) -> bool:
    (prim, _), = space[key].items()
    return prim in LOG_PRIMITIVES


def apply(base: Config, sampled: dict[str, Any]) -> Config:
    """The config a trial trains: the base with the sampled dotted keys set."""
    over: dict = {}
    for key, value in sampled.items():
        section, _, name = key.partition(".")
        over.setdefault(section, {})[name] = value
    return Config.from_dict(merge(base.to_dict(), over))

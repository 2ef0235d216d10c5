"""Model families: the registry. One module per family, its name in BUILT_IN below.

Everything particular to a family is declared in its module; code outside pipeline/models/
asks the family (its attributes, `can()`) and never tests its name. The contract (v2):

    Config                 frozen dataclass of its hyperparameters (lr included): the config
                           section named after the family
    PHASES                 optimizer phases per step, e.g. ("discriminator", "generator")
    PROGRESS_KEYS          metric keys shown in the progress line, e.g. ("bpd",)
    TUNE_SPACE             default sweep space over Config fields: {"lr": {"loguniform": [a, b]}}
    SWEEP_METRIC           validation metric a sweep optimises, e.g. "val_bpd"; None when the
                           family has no validation loss: sweeps then use a small-sample FID
    SWEEP_MODE             "min" | "max"
    LIKELIHOOD             "exact" | "bound" | None
    LIKELIHOOD_NOTE        one line: what the number is, or why there is none
    GRID_SIZE              images in a logged sample grid (fewer for slow samplers)
    DDP_OPTIONS            {net name: DistributedDataParallel kwargs}
    build(cfg, image_shape, num_classes) -> {name: nn.Module}   (networks keep image_shape)
    make_optimizers(cfg, nets) -> {phase: Optimizer}
    loss(cfg, nets, x_uint8, y, phase) -> {"loss": ..., other scalars to log}
  where the family has them (see `can`):
    sample(cfg, nets, n, labels=None, device="cpu") -> uint8 (n, C, H, W); slow samplers may
        take progress=callable, called with the number of pixel positions just finished
    nll(cfg, nets, x, y=None, k=1) -> nats per image (B,)
    reconstruct(cfg, nets, x, y=None), encode(cfg, nets, x, y=None)
  optional: PUBLISHED (published numbers for the report, plain dicts; report/references.py),
    CURVE_PANELS (training-curve panels; report/plots.py), pixel_bits(cfg) (eval/likelihood.py),
    TINY ({Config field: value}: the tiny size the tests, the tiny checkpoints of
    testing/evalkit.py and the benchmarks' --smoke train; a family without it: its defaults),
    EMA ({net name: decay}: the nets that keep an exponential moving average of their weights
    by default, e.g. {"generator": 0.999}; sampling and evaluation then use the averaged
    weights. train.ema_decay overrides every decay, 0 turns the EMA off, and a value > 0 on a
    family without EMA averages all its nets: see `ema_decays` and pipeline/ema.py)

Where families come from: the built-ins below, families the user's own code registered in
this process with `register(name, module)`, and installed packages that declare an entry point
in the group `genbench.families` (in their pyproject.toml:
`[project.entry-points."genbench.families"] toy = "genbench_toy"`). Never from data: a config,
checkpoint, MLflow run, sweep spec or task config names a family only by its name, and
pipeline.config refuses one that names code to import (`family_module`). A checkpoint from
someone else thus cannot make genbench import a file.

Ray workers and Tune trial processes never ran the user's `register()` calls: there only the
built-ins and entry-point families exist. A family used by `genbench train`, `tune`, `bench`
or `eval --workers` must therefore be installed as a package with an entry point; `register()`
serves code that stays in its own process (a notebook calling pipeline.loop.fit, a test).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from collections.abc import Mapping
from types import ModuleType

ENTRY_POINT_GROUP = "genbench.families"
_REGISTRY: dict[str, str | ModuleType] = {}   # name -> module path, .py file or module
_LOADED: dict[str, ModuleType] = {}            # name -> its module, checked against the contract
_ENTRY_POINTS: dict[str, str] = {}             # name -> "module (distribution)", for messages
_discovered = False
REQUIRED = ("Config", "PHASES", "PROGRESS_KEYS", "TUNE_SPACE", "SWEEP_METRIC", "SWEEP_MODE",
            "LIKELIHOOD", "LIKELIHOOD_NOTE", "GRID_SIZE", "DDP_OPTIONS", "build",
            "make_optimizers", "loss")
LIKELIHOODS = ("exact", "bound", None)


def register(name: str, module: str | ModuleType) -> None:
    """Add a family from your own code: `name` is its config section and --model value;
    `module` an importable module path, a module, or a .py file (`register("wgan", __file__)`).
    Only this process learns of it: Ray workers and sweep trials find a family through its
    `genbench.families` entry point (see the module docstring). Registering the same pair
    again is a no-op."""
    if isinstance(module, str) and module.endswith(".py"):
        module = os.path.abspath(module)
    _discover()
    known = _REGISTRY.get(name)
    if known is not None and known != module:
        raise ValueError(f"family {name!r} is already registered as {_describe(name)}; "
                         f"pick another name")
    _REGISTRY[name] = module


def unregister(name: str) -> None:
    """Remove a family registered outside pipeline/models/ (built-in ones stay)."""
    if name in BUILT_IN:
        raise ValueError(f"{name} is a built-in family")
    _REGISTRY.pop(name, None)
    _LOADED.pop(name, None)
    _ENTRY_POINTS.pop(name, None)


# pipeline/models/<name>.py each
BUILT_IN = ("ae", "vae", "gan", "pixelcnn", "transformer", "flow", "diffusion")
_REGISTRY.update({name: f"pipeline.models.{name}" for name in BUILT_IN})
DEFAULT_FAMILY = "vae"   # the model of a config that names none


def _discover() -> None:
    """Add the families installed packages declare under ENTRY_POINT_GROUP, once per process.
    A name already taken (a built-in, or registered first) keeps its module, with a warning."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"{ep.value} (entry point of {ep.dist.name if ep.dist else 'a package'})"
        known = _REGISTRY.get(ep.name)
        if known is not None:
            if known != ep.value:
                warnings.warn(f"genbench: family {ep.name!r} of {where} ignored: the name is "
                              f"taken by {_describe(ep.name)}", stacklevel=2)
            continue
        if ":" in ep.value:
            warnings.warn(f"genbench: family {ep.name!r} of {where} ignored: the value must "
                          f"name a module (e.g. toy = \"genbench_toy\"), not an object",
                          stacklevel=2)
            continue
        _REGISTRY[ep.name] = ep.value
        _ENTRY_POINTS[ep.name] = where


def _describe(name: str) -> str:
    target = _REGISTRY[name]
    if name in _ENTRY_POINTS:
        return _ENTRY_POINTS[name]
    return target.__name__ if isinstance(target, ModuleType) else target


def _known(name) -> bool:
    if not isinstance(name, str):
        return False
    if name not in _REGISTRY:
        _discover()
    return name in _REGISTRY


def names() -> list[str]:
    _discover()
    return list(_REGISTRY)


def module_path(name: str) -> str:
    """Where the family's module comes from, for messages."""
    _known(name)
    return _describe(name)


def is_built_in(name: str) -> bool:
    return name in BUILT_IN


def from_entry_point(name: str) -> bool:
    """Whether the family comes from an installed package's entry point."""
    _known(name)
    return name in _ENTRY_POINTS


def get(name: str) -> ModuleType:
    """The family's module, imported and checked against the contract on first use."""
    if name not in _LOADED:
        if not _known(name):
            raise KeyError(name)
        module = _import(_REGISTRY[name])
        check(name, module)
        _LOADED[name] = module
    return _LOADED[name]


def _import(target: str | ModuleType) -> ModuleType:
    """A module named by the registry, which only code (built-ins, the user's register() calls,
    installed entry points) fills: never a path from a config."""
    if isinstance(target, ModuleType):
        return target
    if not target.endswith(".py"):
        return importlib.import_module(target)
    for module in list(sys.modules.values()):  # already imported, e.g. the registering script
        if os.path.abspath(getattr(module, "__file__", None) or "") == target:
            return module
    if not os.path.isfile(target):
        raise ImportError(f"no file {target}")
    name = f"genbench_family_{os.path.splitext(os.path.basename(target))[0]}"
    spec = importlib.util.spec_from_file_location(name, target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def check(name: str, module: ModuleType) -> None:
    missing = [a for a in REQUIRED if not hasattr(module, a)]
    if missing:
        raise TypeError(f"family {name} ({module.__name__}) lacks {', '.join(missing)}; see "
                        f"the contract in pipeline/models/__init__.py")
    if module.LIKELIHOOD not in LIKELIHOODS:
        raise TypeError(f"family {name}: LIKELIHOOD must be one of {LIKELIHOODS}")
    if (module.LIKELIHOOD is None) == can(module, "nll"):
        raise TypeError(f"family {name}: LIKELIHOOD {module.LIKELIHOOD!r} disagrees with "
                        f"{'having' if can(module, 'nll') else 'lacking'} nll()")
    if module.SWEEP_MODE not in ("min", "max"):
        raise TypeError(f"family {name}: SWEEP_MODE must be 'min' or 'max'")
    if not isinstance(module.DDP_OPTIONS, dict):
        raise TypeError(f"family {name}: DDP_OPTIONS must be a dict {{net name: kwargs}}")


class _Families(Mapping):
    """name -> module, importing each family when first asked for."""

    def __getitem__(self, name: str) -> ModuleType:
        return get(name)

    def __iter__(self):
        return iter(names())

    def __len__(self) -> int:
        return len(names())

    def __contains__(self, name) -> bool:
        return _known(name)


FAMILIES = _Families()


def ema_decays(family, net_names, override: float | None = None) -> dict[str, float]:
    """{net name: decay} of the nets that keep a weight average (pipeline/ema.py): the family's
    EMA, each decay replaced by `override` (train.ema_decay) when it is given; override 0: none;
    override > 0 on a family without EMA: every net in `net_names`."""
    if isinstance(family, str):
        family = get(family)
    default = dict(getattr(family, "EMA", None) or {})
    if override is None:
        return default
    if override == 0:
        return {}
    return {name: float(override) for name in (default or net_names)}


def can(family, capability: str) -> bool:
    """Whether a family (module or name) offers e.g. "sample", "reconstruct", "nll", "encode"."""
    if isinstance(family, str):
        family = get(family)
    return callable(getattr(family, capability, None))

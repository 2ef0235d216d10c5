"""Model families: the registry. One module per family, one line per family below.

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
  optional: PUBLISHED (published numbers for the report, plain dicts; eval/references.py),
    CURVE_PANELS (training-curve panels; eval/plots.py), pixel_bits(cfg) (eval/likelihood.py)

A family defined elsewhere registers with `register(name, "importable.module")` or
`register(name, "/path/to/family.py")` (e.g. `register("wgan", __file__)` in a script). Its
Config then carries that string (`family_module`), so Ray workers and trial processes, which
never ran the registration, import the family when they rebuild the config. A config can thus
name code to import, as a checkpoint's config can: load configs and checkpoints you trust.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from types import ModuleType

_REGISTRY: dict[str, str] = {}           # name -> module path or .py file
_LOADED: dict[str, ModuleType] = {}       # name -> its module, checked against the contract
_BUILT_IN: set[str] = set()
REQUIRED = ("Config", "PHASES", "PROGRESS_KEYS", "TUNE_SPACE", "SWEEP_METRIC", "SWEEP_MODE",
            "LIKELIHOOD", "LIKELIHOOD_NOTE", "GRID_SIZE", "DDP_OPTIONS", "build",
            "make_optimizers", "loss")
LIKELIHOODS = ("exact", "bound", None)


def register(name: str, module: str) -> None:
    """Add a family: `name` is its config section and --model value; `module` an importable
    module path or a .py file. Registering the same pair again is a no-op."""
    if module.endswith(".py"):
        module = os.path.abspath(module)
    known = _REGISTRY.get(name)
    if known is not None and known != module:
        raise ValueError(f"family {name!r} is already registered as {known}; pick another name")
    _REGISTRY[name] = module


def unregister(name: str) -> None:
    """Remove a family registered outside pipeline/models/ (built-in ones stay)."""
    if name in _BUILT_IN:
        raise ValueError(f"{name} is a built-in family")
    _REGISTRY.pop(name, None)
    _LOADED.pop(name, None)


register("ae", "pipeline.models.ae")
register("vae", "pipeline.models.vae")
register("gan", "pipeline.models.gan")
register("pixelcnn", "pipeline.models.pixelcnn")
register("transformer", "pipeline.models.transformer")

_BUILT_IN.update(_REGISTRY)
DEFAULT_FAMILY = "vae"   # the model of a config that names none


def names() -> list[str]:
    return list(_REGISTRY)


def module_path(name: str) -> str:
    return _REGISTRY[name]


def is_built_in(name: str) -> bool:
    return name in _BUILT_IN


def get(name: str) -> ModuleType:
    """The family's module, imported and checked against the contract on first use."""
    if name not in _LOADED:
        if name not in _REGISTRY:
            raise KeyError(name)
        module = _import(_REGISTRY[name])
        check(name, module)
        _LOADED[name] = module
    return _LOADED[name]


def _import(target: str) -> ModuleType:
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
        return iter(list(_REGISTRY))

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name) -> bool:
        return name in _REGISTRY


FAMILIES = _Families()


def can(family, capability: str) -> bool:
    """Whether a family (module or name) offers e.g. "sample", "reconstruct", "nll", "encode"."""
    if isinstance(family, str):
        family = get(family)
    return callable(getattr(family, capability, None))

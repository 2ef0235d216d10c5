"""Model families. Each module holds one family behind the same small contract:

    Config                 frozen dataclass of its hyperparameters (lr included)
    PHASES                 optimizer phases per step, e.g. ("discriminator", "generator")
    build(cfg, image_shape, num_classes) -> {name: nn.Module}
    make_optimizers(cfg, nets) -> {phase: Optimizer}
    loss(cfg, nets, x_uint8, y, phase) -> {"loss": ..., other scalars to log}
    sample / reconstruct / encode / nll where the family has them
"""
from pipeline.models import ae, gan, pixelcnn, transformer, vae

FAMILIES = {"ae": ae, "vae": vae, "gan": gan, "pixelcnn": pixelcnn,
            "transformer": transformer}
DEFAULT_FAMILY = "vae"


def names() -> list[str]:
    return list(FAMILIES)


def can(family, capability: str) -> bool:
    """Whether a family offers e.g. "sample", "reconstruct", "nll" or "encode"."""
    return hasattr(family, capability)

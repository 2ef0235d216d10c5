"""Published numbers to show beside ours, only when the protocol is the same.

A number is comparable only under the protocol it was measured with: the same dataset and split,
the same metric, and for sample-quality metrics the same feature extractor (torch-fidelity's
InceptionV3) and the same number of generated and real images. A row here is shown in a report
only on an exact match (`matching`); a FID from the offline `domain` extractor, or from another
n, never gets a published number beside it.

The rows are declared by the families (a module's REFERENCES: dicts with the fields of
Reference except `family`). Add a row only from a source you have read, with the protocol it
states. Sample-quality (FID/IS/KID) rows for Fashion-MNIST are deliberately absent: the papers
we could check do not state an InceptionV3 protocol that genbench reproduces.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    family: str              # the genbench family it is comparable with
    model: str               # the published model
    dataset: str             # genbench dataset name
    metric: str              # the genbench metric key it sits beside, e.g. bpd_test, fid_inception
    value: float
    source: str              # paper, table
    url: str                 # shown as text in the report, never as a link or a request
    n_fake: int | None = None  # sample-quality metrics: generated images
    n_real: int | None = None  # ... and real images; None for likelihoods
    note: str = ""


def declared_references() -> tuple[Reference, ...]:
    """Every registered family's REFERENCES."""
    from pipeline.models import FAMILIES
    return tuple(Reference(family=name, **row) for name in FAMILIES
                 for row in getattr(FAMILIES[name], "REFERENCES", ()))

EXTRACTOR_OF_SUFFIX = "inception"  # only this extractor's numbers are comparable with papers


def extractor_of(metric: str) -> str | None:
    """fid_inception -> inception; bpd_test -> None (no extractor)."""
    head, _, tail = metric.rpartition("_")
    return tail if head.split("_")[0] in ("fid", "is", "kid", "precision", "recall") else None


def matching(family: str, dataset: str, metric: str, n_fake: int | None = None,
             n_real: int | None = None, references=None) -> list[Reference]:
    """References whose protocol equals ours exactly; an empty list otherwise."""
    if references is None:
        references = declared_references()
    ext = extractor_of(metric)
    if ext is not None and ext != EXTRACTOR_OF_SUFFIX:
        return []
    found = []
    for ref in references:
        if (ref.family, ref.dataset, ref.metric) != (family, dataset, metric):
            continue
        if ext is not None and (ref.n_fake is None or ref.n_fake != n_fake
                                or (ref.n_real is not None and ref.n_real != n_real)):
            continue
        found.append(ref)
    return found

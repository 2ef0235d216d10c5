"""Published numbers to show beside ours, only when the protocol is the same.

A number is comparable only under the protocol it was measured with: the same dataset and
reference split, the same metric, and for sample-quality metrics the same feature extractor
(InceptionV3, the 2015-12-05 weights that TF FID code and torch-fidelity's inception-v3-compat
share) and the same number of generated and real images (FID is biased by n). A row is shown in
a report only on an exact match (`matching`); a FID from the offline `domain` extractor, from
another n or against another split never gets a published number beside it.

The rows live with the family they are comparable with: `PUBLISHED` in pipeline/models/<name>.py
(plain dicts; models import torch only), each with `when`, the family config values a run must
have (an NS-GAN number only beside a non-saturating GAN). Add a row only from a source you have
read, with the protocol it states.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.schema import extractor_of

INCEPTION = "inception"  # only this extractor's numbers are comparable with papers


@dataclass(frozen=True)
class Reference:
    family: str              # the genbench family it is comparable with (its module declares it)
    model: str               # the published model
    dataset: str             # genbench dataset name
    metric: str              # the genbench metric key it sits beside, e.g. bpd_test, fid_inception
    value: float
    source: str              # paper, table
    url: str                 # shown as text in the report, never as a link or a request
    n_fake: int | None = None  # sample-quality metrics: generated images
    n_real: int | None = None  # ... and real images; None for likelihoods
    note: str = ""
    spread: float | None = None      # the published ± (its meaning is in `protocol`)
    reference_split: str = "test"    # the real images (FID) or the scored split (likelihood)
    when: tuple = ()                 # ((config key, value), ...) a run must have; a key without
    #                                  a section is the family's ("g_loss" -> "gan.g_loss")
    protocol: str = ""               # how the published number was measured, in words

    @property
    def shown(self) -> str:
        return f"{self.value:g}" + (f" ± {self.spread:g}" if self.spread is not None else "")


def from_families() -> tuple[Reference, ...]:
    """Every family's PUBLISHED rows."""
    from pipeline.models import FAMILIES

    rows = []
    for name, module in FAMILIES.items():
        for row in getattr(module, "PUBLISHED", ()):
            row = dict(row)
            row["when"] = tuple(sorted(row.get("when", {}).items()))
            rows.append(Reference(family=name, **row))
    return tuple(rows)


def matching(family: str, dataset: str, metric: str, n_fake: int | None = None,
             n_real: int | None = None, references=None, reference_split: str | None = None,
             params: dict | None = None) -> list[Reference]:
    """References whose protocol equals ours exactly; an empty list otherwise.

    reference_split: the split our number was measured against (None: unknown, which matches
    only a likelihood row, whose split is the dataset's test split by construction);
    params: the run's flat config ("gan.g_loss": ...), checked against each row's `when`."""
    references = from_families() if references is None else references
    ext = extractor_of(metric)
    if ext is not None and ext != INCEPTION:
        return []
    found = []
    for ref in references:
        if (ref.family, ref.dataset, ref.metric) != (family, dataset, metric):
            continue
        if ext is not None and (ref.n_fake is None or ref.n_fake != n_fake
                                or (ref.n_real is not None and ref.n_real != n_real)
                                or reference_split != ref.reference_split):
            continue
        if ref.when and (params is None or any(
                str(params.get(k if "." in k else f"{family}.{k}")) != str(v)
                for k, v in ref.when)):
            continue
        found.append(ref)
    return found

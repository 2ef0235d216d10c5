"""Evaluation records as the report reads them: every number with the stamps of the evaluation
that made it.

`genbench eval` logs each evaluation as a run of its own (kind `evaluation`), nested under the
run it evaluated, with its protocol as params (eval/run.py). A run evaluated twice, say with
`--metrics ood` and then `--metrics fid`, has two records; the evaluated run's own tags hold
only the latest one's stamps. `evaluated(run, records)` gives the run as the report reads it:
for each metric the newest record that logged it, that record's value, and that record's
stamps (a metric's spread and interval come from the same record as the metric, never from an
older one). Numbers no record holds (runs evaluated before records existed, or logged by hand)
keep the run's own params and tags as their stamps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from pipeline import schema


def records_by_parent(runs: list) -> dict[str, list]:
    """{evaluated run id: its finished evaluation records, newest first} (runs come newest
    first; a record cut short, e.g. killed, is left out: its numbers may be partial)."""
    out: dict[str, list] = {}
    for r in runs:
        if schema.kind(r.data.tags) == schema.EVALUATION and r.info.status == "FINISHED":
            parent = schema.parent_of(r.data.tags)
            if parent:
                out.setdefault(parent, []).append(r)
    for records in out.values():
        records.sort(key=lambda r: r.info.start_time, reverse=True)
    return out


def base_key(key: str) -> str:
    """The metric a derived key belongs to: fid_domain_ci_low, fid_domain_std -> fid_domain."""
    for suffix in schema.CI_SUFFIXES + (schema.STD,):
        if key.endswith(suffix):
            return key[:-len(suffix)]
    return key


@dataclass(frozen=True)
class Source:
    """The evaluation a number came from."""
    record_id: str
    stamps: dict          # the record's params: its protocol


@dataclass(eq=False)
class Evaluated:
    """A run with each metric taken from the newest evaluation record that logged it; reads
    like an MLflow run (.info, .data.metrics/params/tags) for the code that reads runs."""
    run: object
    sources: dict = field(default_factory=dict)     # metric key -> Source

    def __post_init__(self):
        self.info = self.run.info
        self.data = SimpleNamespace(metrics=dict(self.run.data.metrics),
                                    params=self.run.data.params, tags=self.run.data.tags)

    def stamps(self, key: str) -> dict:
        return stamps_of(self, key)


def evaluated(run, records: list) -> Evaluated:
    """run as the report reads it, given its records (newest first)."""
    view = Evaluated(run)
    owner: dict[str, object] = {}   # base key -> the newest record that logged it
    for rec in records:
        for key in rec.data.metrics:
            owner.setdefault(base_key(key), rec)
    if not owner:
        return view
    # the run's own values of metrics a record owns go: a spread or interval of an older
    # evaluation must not stand beside a newer evaluation's number
    metrics = {k: v for k, v in view.data.metrics.items() if base_key(k) not in owner}
    for rec in records:
        source = Source(rec.info.run_id, dict(rec.data.params))
        for key, value in rec.data.metrics.items():
            if owner[base_key(key)] is rec:
                metrics[key] = value
                view.sources[key] = source
    view.data.metrics = metrics
    return view


def stamps_of(run, key: str) -> dict:
    """The stamps a number of `run` (an Evaluated, a report row or seed, or an MLflow run) was
    measured under: its record's params, else the run's own params and tags."""
    source = source_of(run, key)
    if source is not None:
        return source.stamps
    data = getattr(run, "data", run)
    return {**data.params, **data.tags}


def source_of(run, key: str) -> Source | None:
    sources = getattr(run, "sources", None) or {}
    return sources.get(key) or sources.get(base_key(key))

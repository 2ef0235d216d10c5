"""The report's significance section: for each sample-quality column of the results table, the
difference between each pair of families with a 95% interval, and ranks with ties
(report/significance.py does the statistics; this reads what it needs from MLflow).

Only numbers of one column are compared: a column holds one protocol (extractor weights, n_fake,
n_real, reference split), and the bootstrap replicates must also share the eval seed (which
picks the reference subset and the shared real resamples), the number of resamples and KID's
subset size. Two paths, as significance.py:
- every family of the column has >= 3 seeds: Welch t over the seeds (`seed_ranking`), with the
  seed-to-seed and sample-to-sample spreads apart (the latter where the seeds' evaluations saved
  replicates);
- else the one-seed paired bootstrap (`pairwise_bootstrap`) on each family's newest run, from the
  replicates `genbench eval --bootstrap N` saved in its record's eval.json.
A column without what it needs gets a sentence saying what to run, never an exception.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field

from pipeline import schema, tracking
from pipeline.errors import ConfigError
from report.data import Column, FamilyRow, fmt
from report.records import source_of
from report.significance import LOWER_IS_BETTER, Ranking, pairwise_bootstrap, seed_ranking
from report.tables import mark_rank, measured

REPLICATES_RECORD = "bootstrap_replicates"     # eval/metrics/fidelity.py's key in eval.json
MIN_SEEDS = 3
PAIRING = ("seed", "resamples", "kid_subset_size", "n_fake", "n_real", "weights")


@dataclass
class SignificanceTable:
    column: str                  # the results column's id
    title: str                   # "FID ↓ (domain features: 2000 generated vs 2000 test images)"
    ranking: Ranking | None = None
    pairs: list = field(default_factory=list)      # (first, second, text, separated)
    spreads: list = field(default_factory=list)    # (family, seeds, mean, seed sd, sample sd)
    notes: list = field(default_factory=list)      # why a family or the column is left out

    @property
    def note(self) -> str:
        return self.ranking.note if self.ranking else ""


def difference_text(estimate: float, low: float, high: float) -> str:
    return f"{fmt(estimate)} [{fmt(low)}, {fmt(high)}]"


class ReplicateReader:
    """A run's bootstrap replicates for a metric key, from the eval.json of the record that
    logged the metric (downloaded once per record)."""

    def __init__(self, uri: str | None):
        self.uri = uri
        self.cache: dict[tuple, list] = {}

    def __call__(self, run, key: str) -> dict | None:
        source = source_of(run, key)
        if source is None:
            return None
        folder = source.stamps.get(schema.eval_tag("artifacts"))
        ext = schema.extractor_of(key)
        if not folder or schema.extractor_tag(ext, "replicates") not in source.stamps:
            return None
        where = (run.run_id, f"{folder}/eval.json")
        if where not in self.cache:
            self.cache[where] = self._download(*where)
        return next((r for r in self.cache[where] if r.get("key") == key), None)

    def _download(self, run_id: str, path: str) -> list:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                record = json.loads(tracking.download_artifact(run_id, path, tmp,
                                                               self.uri).read_text())
        except Exception:   # a missing or damaged artifact: the column says what is missing
            return []
        found = record.get(REPLICATES_RECORD)
        return found if isinstance(found, list) else []


def significance_tables(rows: list[FamilyRow], columns: list[Column], uri: str | None = None,
                        read=None) -> list[SignificanceTable]:
    """One table per sample-quality column with at least two families; marks the ranks in the
    rows' cells of that column (tables.mark_rank). read(run, key) -> a replicates entry or None
    (default: ReplicateReader(uri), from the records' eval.json)."""
    read = read or ReplicateReader(uri)
    out = []
    for col in columns:
        metric = col.key.split("_")[0]
        if col.protocol is None or not col.direction:
            continue
        runs = {row.family: measured(row.seeds or [row], col) for row in rows}
        runs = {f: r for f, r in runs.items() if r}
        if len(runs) < 2:
            continue
        title = f"{col.label}{' ' + col.arrow if col.arrow else ''} ({col.group})"
        table = SignificanceTable(col.id, title)
        higher = col.direction == "higher"
        if all(len(r) >= MIN_SEEDS for r in runs.values()):
            seed_path(table, col, runs, higher, read)
        elif metric in LOWER_IS_BETTER:
            bootstrap_path(table, col, {f: [row for row in rows if row.family == f][0]
                                        for f in runs}, higher, read)
        else:
            continue   # one seed: replicates exist for FID and KID only
        if table.ranking is not None:
            for row in rows:
                if row.family in table.ranking.ranks:
                    mark_rank(row.cells[col.id], table.ranking.ranks[row.family],
                              table.ranking.tied(row.family))
        out.append(table)
    return out


def _fill(table: SignificanceTable, ranking: Ranking) -> None:
    table.ranking = ranking
    for (a, b), d in ranking.differences.items():
        table.pairs.append((a, b, difference_text(d.estimate, d.low, d.high), d.separated))


def seed_path(table: SignificanceTable, col: Column, runs: dict, higher: bool, read) -> None:
    per_seed = {f: [r.metrics[col.key] for r in rs] for f, rs in runs.items()}
    samples = {}
    for f, rs in runs.items():
        found = [read(r, col.key) for r in rs]
        if all(found):
            samples[f] = [x["values"] for x in found]
    ranking = seed_ranking(per_seed, metric=col.key, sample_replicates=samples or None,
                           higher_is_better=higher)
    _fill(table, ranking)
    for f, s in ranking.spreads.items():
        table.spreads.append((f, s.seeds, fmt(s.mean), fmt(s.seed_sd),
                              fmt(s.sample_sd) if s.sample_sd is not None else "—"))
    if len(samples) < len(runs):
        table.notes.append("sample-to-sample spread (—) needs every seed evaluated with "
                           "`genbench eval --bootstrap N`")


def bootstrap_path(table: SignificanceTable, col: Column, picked: dict, higher: bool,
                   read) -> None:
    """One seed: the families' newest runs with paired replicates of one protocol."""
    found = {f: read(run, col.key) for f, run in picked.items()}
    lacking = sorted(f for f, r in found.items() if r is None)
    if len(lacking) == len(found) and lacking:   # none resampled (e.g. --bootstrap-metrics fid)
        metric = (schema.parse_fidelity_key(col.key) or ("fid,kid",))[0]
        table.notes.append(f"no family was resampled for this metric (`genbench eval "
                           f"--bootstrap N --bootstrap-metrics {metric}`, or 3+ seeds per "
                           f"family): no pairwise intervals")
        return
    if lacking:
        table.notes.append(f"no bootstrap replicates for {', '.join(lacking)}: evaluate with "
                           f"`genbench eval --bootstrap N` (the same N and --seed for every "
                           f"family), or train 3+ seeds")
    by_pairing: dict[tuple, list] = {}
    for f, r in found.items():
        if r is not None:
            by_pairing.setdefault(tuple(r.get(k) for k in PAIRING), []).append(f)
    if not by_pairing:
        return
    pairing, families = max(by_pairing.items(), key=lambda kv: len(kv[1]))
    for other, fams in by_pairing.items():
        if other != pairing:
            table.notes.append(
                f"{', '.join(sorted(fams))} left out: replicates drawn with another "
                f"{'/'.join(k for k, a, b in zip(PAIRING, other, pairing) if a != b)} "
                f"(never paired across protocols)")
    if len(families) < 2:
        return
    try:
        ranking = pairwise_bootstrap({f: picked[f].metrics[col.key] for f in families},
                                     {f: _tensor(found[f]["values"]) for f in families},
                                     metric=col.key, higher_is_better=higher)
    except ConfigError as err:
        table.notes.append(str(err))
        return
    _fill(table, ranking)
    seeds = [f for f in families if len(picked[f].seeds) > 1]
    if seeds:
        table.notes.append(f"{', '.join(seeds)}: fewer than {MIN_SEEDS} seeds, so the bootstrap "
                           f"is of the newest run, not of the mean in the results table")


def _tensor(values):
    import torch
    return torch.tensor(values, dtype=torch.float64)

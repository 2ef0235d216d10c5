"""The report's tables: columns discovered from the metrics the runs hold (a sample-quality
column per extractor and protocol), one cell per family and column, the seeds, the real-vs-real
floor, and what every family was measured under."""
from __future__ import annotations

import statistics

from eval import metrics as registry
from pipeline import schema
from report import references
from report.data import (FIDELITY, Cell, Column, FamilyRow, eval_metric, fmt, fmt_seconds, label,
                         std_of)
from report.records import source_of, stamps_of

LIKELIHOOD_GROUP = "likelihood & encoder"   # bits/dim, its stand-ins and the probe
BUILT_IN_GROUP = {"bpd": LIKELIHOOD_GROUP, "probe": LIKELIHOOD_GROUP}
PLUG_IN_GROUP = "more metrics"              # registered metrics other than the built-ins


def output_order(key: str) -> tuple:
    """Registry order: metrics in the order they are registered, outputs as each declares."""
    order = [(m, o.key) for m in registry.all_metrics() for o in m.outputs]
    found = registry.output_of(key)
    if found is None:
        return (len(order), key)
    return (order.index((found[0], found[1].key)), key)


def fidelity_protocol(stamps: dict, metric: str) -> tuple:
    """(n_fake, n_real, reference split, extractor weights) a sample-quality metric was measured
    under, from eval's eval.<extractor>.* stamps; None where a run did not record one."""
    ext = schema.extractor_of(metric)
    return tuple(stamps.get(schema.extractor_tag(ext, name)) for name in schema.FIDELITY_PROTOCOL)


def describe_protocol(ext: str, protocol: tuple, with_weights: bool = False) -> str:
    """'domain features: 2000 generated vs 2000 test images'."""
    n_fake, n_real, split, sha = protocol
    if n_fake is None and n_real is None:
        text = f"{ext} features: n not recorded"
    else:
        text = (f"{ext} features: {n_fake or '?'} generated vs {n_real or '?'} "
                f"{split or '?'} images")
    return text + (f", weights {str(sha)[:8]}" if with_weights and sha else "")


def discover_columns(rows: list[FamilyRow]) -> list[Column]:
    """Likelihood/encoder columns, then sample-quality columns grouped by extractor and protocol:
    every value in a column was measured with the same n_fake, n_real, reference split and
    extractor weights. A family measured under another protocol gets its own column group, named
    with its n, never a place in the same column."""
    keys = {k for row in rows for s in row.seeds or [row] for k in s.metrics
            if eval_metric(k) and schema.STD not in k and not k.endswith(schema.CI_SUFFIXES)}
    likelihood = sorted((k for k in keys if not schema.parse_fidelity_key(k)), key=output_order)
    cols = [Column(k, label(k), BUILT_IN_GROUP.get(registry.output_of(k)[0].name,
                                                   PLUG_IN_GROUP), direction=registry.direction(k))
            for k in likelihood]
    if schema.BPD_TEST not in likelihood:  # always show the (8-bit) bits/dim column
        cols.insert(0, Column(schema.BPD_TEST, label(schema.BPD_TEST), LIKELIHOOD_GROUP,
                              direction=registry.direction(schema.BPD_TEST)))
    protocols: dict[str, dict[tuple, set]] = {}   # ext -> protocol -> metrics measured so
    for row in rows:
        for run in row.seeds or [row]:
            for k in run.metrics:
                parsed = schema.parse_fidelity_key(k)  # (fid_domain_ci_low: None, no column)
                if parsed and schema.STD not in k:
                    stamps = stamps_of(run, k)
                    protocols.setdefault(parsed[1], {}).setdefault(
                        fidelity_protocol(stamps, k), set()).add(parsed[0])
    for ext in sorted(protocols, key=lambda e: (e != "inception", e)):
        by_protocol = protocols[ext]
        several = len(by_protocol) > 1
        shas = {p[3] for p in by_protocol}
        # larger n first: the column a paper would report
        for p in sorted(by_protocol, key=lambda p: tuple(-int(x) if str(x).isdigit() else 0
                                                         for x in p[:2])):
            group = describe_protocol(ext, p, with_weights=len(shas) > 1)
            for metric in FIDELITY:
                if metric in by_protocol[p]:
                    key = schema.fidelity_key(metric, ext)
                    col_id = f"{key}@{'-'.join(str(x)[:8] for x in p)}" if several else key
                    cols.append(Column(key, registry.label(key).split(" (")[0], group, col_id,
                                       p, registry.direction(key)))
    cols += [Column("train.total_steps", "steps", "training"),
             Column("wall_seconds", "wall time", "training"),
             Column("images_per_s_median", "images/s", "training"),
             Column("train.workers", "workers", "training"),
             Column("hardware", "hardware", "training")]
    return cols


def applicable(fam: str, key: str) -> bool:
    """Whether a family can have this metric at all (GAN bits/dim: no, and never zero)."""
    from pipeline.models import FAMILIES

    module = FAMILIES.get(fam)
    return True if module is None else registry.applicable(module, key)


OTHER_PROTOCOL = "measured under another protocol: see its own column"


def fill_cells(rows: list[FamilyRow], columns: list[Column]) -> None:
    for row in rows:
        for col in columns:
            row.cells[col.id] = cell(row, col)
        unmeasured = [label(c.key) for c in columns if c.group != "training"
                      and row.cells[c.id].text == "—" and row.cells[c.id].note != OTHER_PROTOCOL]
        if unmeasured and any(eval_metric(k) for k in row.metrics):  # else "no eval yet" says it
            row.notes.append(f"not measured yet: {', '.join(dict.fromkeys(unmeasured))}")
        for col in columns:
            if col.group == "training" or row.cells[col.id].value is None:
                continue
            n_fake, n_real, split, _ = col.protocol or (None, None, None, None)
            for ref in references.matching(row.family, row.dataset, col.key, as_int(n_fake),
                                           as_int(n_real), reference_split=split,
                                           params=row.params):
                row.refs.append((col.id, ref))


def as_int(text) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def measured(runs: list, col: Column) -> list:
    """The runs that have this column's metric under this column's protocol."""
    return [r for r in runs if r.metrics.get(col.key) is not None and (
        col.protocol is None or fidelity_protocol(stamps_of(r, col.key), col.key) == col.protocol)]


def stamp_of(run, key: str) -> str:
    """How a number was measured, from the stamps its metric declares (registry), read from
    the evaluation that made it: 'IWAE bound, k=16; k=16; images=300 ...; evaluation 1a2b3c4d'."""
    stamps = stamps_of(run, key)
    parts = []
    for tag in registry.stamp_fields(key):
        value = stamps.get(tag)
        if value:
            field = tag.rsplit(".", 1)[-1]
            parts.append(value if tag == schema.eval_tag(key.split("_")[0]) else
                         f"{field}={value}")
    source = source_of(run, key)
    if source is not None:
        parts.append(f"evaluation {source.record_id[:8]}")
    return "; ".join(dict.fromkeys(parts))


def metric_cell(runs: list, key: str, col: Column) -> Cell:
    """One run: its value (± its own spread over IS splits / KID subsets). Several seeds: mean ±
    sample std over the seeds, each seed's value in the note (and the seeds table)."""
    values = [r.metrics[key] for r in runs]
    if len(runs) == 1:
        m = runs[0].metrics
        std = std_of(m, key)
        text = fmt(values[0]) + (f" ± {std:.2g}" if std is not None else "")
        low, high = (m.get(k) for k in schema.ci_keys(key))
        if low is not None and high is not None:  # eval --bootstrap
            text += f" [{fmt(low)}, {fmt(high)}]"
        source = source_of(runs[0], key)
        return Cell(text, key, values[0], stamp_of(runs[0], key),
                    source.record_id if source else "")
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    each = "; ".join(f"seed {r.seed}: {fmt(v)}" for r, v in zip(runs, values))
    return Cell(f"{fmt(mean)} ± {sd:.2g} ({len(runs)} seeds)", key, mean,
                f"mean ± sample std over {len(runs)} seeds ({each}); "
                f"{'; '.join(dict.fromkeys(stamp_of(r, key) for r in runs))}")


def mark_rank(c: Cell, rank: int, tied: bool) -> None:
    """The rank from the significance section (report/significance_section.py) in a results
    cell: "101.8 · #1 (tied)"; tied when its interval with a neighbour holds 0."""
    c.text += f" · #{rank}" + (" (tied)" if tied else "")
    c.note = "; ".join(x for x in (c.note, f"rank {rank}" + (
        ", tied: the 95% interval of the difference holds 0" if tied else "")) if x)


def cell(row: FamilyRow, col: Column) -> Cell:
    key = col.key
    if key == "hardware":
        t = row.tags
        text = t.get(schema.HARDWARE_GPU) or " ".join(x for x in (
            t.get(schema.HARDWARE_CPU, ""), f"{t[schema.HARDWARE_CPUS]} CPUs"
            if schema.HARDWARE_CPUS in t else "") if x) or "—"
        return Cell(text, key)
    if key in row.params:
        return Cell(row.params[key], key)
    if key == "wall_seconds":
        v = row.derived.get(key)
        return Cell(fmt_seconds(v), key, v, "run start to end, Ray start-up included")
    if key == "images_per_s_median":
        v = row.derived.get(key)
        return Cell(fmt(v), key, v, "median over the run's log intervals")
    if col.group != "training" and not applicable(row.family, key):
        return Cell("n/a", key, None, f"not applicable to {row.family}")
    if row.external and col.group != "training" and not schema.parse_fidelity_key(key):
        return Cell("n/a", key, None, "a folder of samples has only sample-quality metrics")
    runs = measured(row.seeds or [row], col)
    if not runs:
        elsewhere = any(key in r.metrics for r in row.seeds or [row])
        return Cell("—", key, None, OTHER_PROTOCOL if elsewhere else "not measured yet")
    return metric_cell(runs, key, col)


def seed_table(rows: list[FamilyRow], columns: list[Column]) -> list:
    """(family, SeedRun, {column id: Cell}) for every seed of the rows with several seeds."""
    out = []
    metric_cols = [c for c in columns if c.group != "training"]
    for row in rows:
        if len(row.seeds) < 2:
            continue
        for run in row.seeds:
            cells = {}
            for col in metric_cols:
                if not applicable(row.family, col.key):
                    cells[col.id] = Cell("n/a", col.key)
                elif measured([run], col):
                    cells[col.id] = metric_cell([run], col.key, col)
                else:
                    cells[col.id] = Cell("—", col.key)
            out.append((row.family, run, cells))
    return out


def floor_order(key: str) -> tuple:
    """The results table's order (extractor, then FIDELITY: FID, KID, IS, precision, recall,
    density, coverage), so that a floor sits in the same place as the numbers it bounds."""
    parsed = schema.parse_fidelity_key(key.removeprefix(schema.FLOOR_PREFIX))
    if parsed is None:
        return ("~", len(FIDELITY), key)   # a floor no metric claims: last
    metric, ext = parsed
    return (ext, FIDELITY.index(metric), key)


def floor_table(rows: list[FamilyRow]) -> tuple[list[str], list[tuple[str, dict]]]:
    """Real-vs-real metrics; one row per distinct set of values and protocol, labelled with the
    protocol it was measured under (the floor moves with n as the models' numbers do). Floors
    of one run from different evaluations are different rows, each with its own stamps."""
    keys = sorted({k for r in rows for k in r.metrics if k.startswith(schema.FLOOR_PREFIX)
                   and schema.STD not in k and r.metrics[k] is not None}, key=floor_order)
    if not keys:
        return [], []
    per_run = []   # (row, protocol text, {key: Cell}): one per run and evaluation
    for r in rows:
        by_record: dict[str, dict] = {}
        for k in keys:
            if k in r.metrics:
                source = source_of(r, k)
                by_record.setdefault(source.record_id if source else "", {})[k] = Cell(
                    fmt(r.metrics[k]), k, r.metrics[k], record=source.record_id if source else "")
        for rid, cells in by_record.items():
            protocols = []
            for ext in dict.fromkeys(schema.extractor_of(k.removeprefix(schema.FLOOR_PREFIX))
                                     for k in cells):
                stamps = stamps_of(r, next(k for k in cells if schema.extractor_of(
                    k.removeprefix(schema.FLOOR_PREFIX)) == ext))
                n_real, split = (stamps.get(schema.extractor_tag(ext, x))
                                 for x in ("n_real", "reference_split"))
                floor = stamps.get(schema.extractor_tag(ext, "floor"), "train images")
                protocols.append(f"{ext}: {floor}, {n_real or '?'} {split or 'test'} images")
            per_run.append((r, "real train vs real test (" + "; ".join(protocols) + ")", cells))
    distinct: dict[tuple, tuple[list, str, dict]] = {}
    for r, text, cells in per_run:
        values = (text,) + tuple((k, c.value) for k, c in cells.items())
        distinct.setdefault(values, ([], text, cells))[0].append(r)
    out = []
    for fams, text, cells in distinct.values():
        if len(distinct) > 1:
            text += f", as logged in the {', '.join(r.family for r in fams)} run(s)"
        out.append((text, cells))
    return keys, out


def by_family(rows: list[FamilyRow], pick) -> list[tuple[str, dict]]:
    table: dict[str, dict] = {}
    for row in rows:
        for k, v in pick(row).items():
            table.setdefault(k, {})[row.family] = v
    return sorted(table.items())



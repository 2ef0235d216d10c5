"""Extractor agreement: when the families were measured with two feature extractors (the domain
classifier and Inception), do both rank them the same? Per sample-quality metric, Spearman's
rank correlation of the families' values under the two extractors, and every pair of families
whose order flips (a ranking that depends on the extractor is not a finding)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

from pipeline import schema


@dataclass
class Agreement:
    metric: str                    # fid, kid, ...
    extractors: tuple[str, str]
    families: list[str]
    rho: float                     # Spearman's rank correlation over the families
    flips: list[tuple[str, str]]   # pairs ordered one way by the first extractor, the other way
                                   # by the second

    @property
    def text(self) -> str:
        return f"{self.rho:+.2f}"


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho (average ranks for ties), as scipy.stats.spearmanr."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def agreements(rows: list) -> list[Agreement]:
    """One Agreement per metric and pair of extractors that two or more families share (rows:
    the report's family rows, `.family` and `.metrics`)."""
    values: dict[str, dict[str, dict[str, float]]] = {}   # metric -> extractor -> family -> v
    for row in rows:
        for key, value in row.metrics.items():
            parsed = schema.parse_fidelity_key(key)
            if parsed and isinstance(value, (int, float)) and math.isfinite(value):
                metric, extractor = parsed
                values.setdefault(metric, {}).setdefault(extractor, {})[row.family] = value
    out = []
    for metric, by_extractor in values.items():
        for first, second in combinations(sorted(by_extractor), 2):
            families = sorted(set(by_extractor[first]) & set(by_extractor[second]))
            if len(families) < 2:
                continue
            x = [by_extractor[first][f] for f in families]
            y = [by_extractor[second][f] for f in families]
            flips = [(families[i], families[j]) for i, j in combinations(range(len(families)), 2)
                     if (x[i] - x[j]) * (y[i] - y[j]) < 0]
            rho = spearman(x, y) if len(families) > 2 else (1.0 if not flips else -1.0)
            out.append(Agreement(metric, (first, second), families, rho, flips))
    return out

"""Statistics over seeds: mean, sample std and a t-based 95% interval per activation, paired
differences against a baseline (same seed) with a paired t-test, and Holm's correction of a table's p-values.

With 3 seeds a t interval is wide (t_0.975,2 = 4.30); that is the honest answer, and the tables say n.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from scipy import stats as scipy_stats


@dataclass
class Aggregate:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for n = 1
    ci95_low: float
    ci95_high: float


@dataclass
class PairedDifference:
    n: int  # seeds present for both
    mean_diff: float  # activation minus baseline
    std_diff: float
    ci95_low: float
    ci95_high: float
    p_value: float  # two-sided paired t-test; nan for n < 2 or zero variance


def _interval(values: list[float]) -> tuple[float, float, float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = scipy_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def aggregate(values: list[float]) -> Aggregate:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return Aggregate(0, math.nan, math.nan, math.nan, math.nan)
    mean, std, low, high = _interval(values)
    return Aggregate(len(values), mean, std, low, high)


def paired_difference(by_seed: dict, baseline_by_seed: dict) -> PairedDifference:
    seeds = sorted(set(by_seed) & set(baseline_by_seed))
    diffs = [float(by_seed[s]) - float(baseline_by_seed[s]) for s in seeds]
    if not diffs:
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean, std, low, high = _interval(diffs)
    p = math.nan
    if len(diffs) >= 2 and std > 0:
        p = float(scipy_stats.ttest_rel([by_seed[s] for s in seeds], [baseline_by_seed[s] for s in seeds]).pvalue)
    return PairedDifference(len(diffs), mean, std, low, high, p)


def by_activation(rows: list[dict], metric: str) -> dict[str, dict[int, float]]:
    """{activation: {seed: value}} for the rows that have ``metric``."""
    table: dict[str, dict[int, float]] = defaultdict(dict)
    for row in rows:
        if row.get(metric) is not None:
            table[row["activation"]][int(row["seed"])] = float(row[metric])
    return dict(table)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (nan stays nan and is not counted as a test): the family-wise error
    stays below alpha when every adjusted p < alpha is called significant. The smallest p is multiplied by the
    number of tests m (Bonferroni), the next by m - 1, and so on, each at least as large as the one before."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted

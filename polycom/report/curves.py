"""Learning curves of the activation gap: the paired difference to a baseline (same seed) at every validation
point, with a t-based 95% interval over seeds, and where along training that gap is largest.

It answers "is an activation's lead an early-training effect, or does it persist?": a gap whose largest value
comes early and whose final value is much smaller is shrinking.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from polycom.report.runs import load_curve
from polycom.report.stats import PairedDifference, holm, paired_difference
from polycom.report.tables import _fmt, _fmt_p, ordered_activations


@dataclass
class GapCurve:
    activation: str
    tokens: list[int]
    gaps: list[PairedDifference]  # activation minus baseline at each token count, over the seeds both have
    seed_gaps: dict[int, list[float]]  # the same difference per seed, at each token count

    def largest(self) -> tuple[int, PairedDifference]:
        """The point whose mean gap is largest in magnitude."""
        i = max(range(len(self.gaps)), key=lambda j: abs(self.gaps[j].mean_diff))
        return self.tokens[i], self.gaps[i]

    def final(self) -> tuple[int, PairedDifference]:
        return self.tokens[-1], self.gaps[-1]


def seed_curves(rows: list[dict], key: str = "val_loss") -> dict[str, dict[int, dict[int, float]]]:
    """{activation: {seed: {tokens: value}}} read from each run's metrics.jsonl."""
    curves: dict[str, dict[int, dict[int, float]]] = defaultdict(dict)
    for row in rows:
        curves[row["activation"]][int(row["seed"])] = dict(load_curve(Path(row["run_dir"]), key))
    return dict(curves)


def gap_curves(rows: list[dict], baseline: str, key: str = "val_loss") -> list[GapCurve]:
    """One GapCurve per activation other than ``baseline``, at the token counts every paired seed logged."""
    curves = seed_curves(rows, key)
    if baseline not in curves:
        return []
    result = []
    for act in ordered_activations(rows):
        if act == baseline or act not in curves:
            continue
        seeds = sorted(set(curves[act]) & set(curves[baseline]))
        if not seeds:
            continue
        tokens = sorted(set.intersection(*(set(curves[a][s]) for s in seeds for a in (act, baseline))))
        gaps = [paired_difference({s: curves[act][s][t] for s in seeds}, {s: curves[baseline][s][t] for s in seeds})
                for t in tokens]
        if tokens:
            seed_gaps = {s: [curves[act][s][t] - curves[baseline][s][t] for t in tokens] for s in seeds}
            result.append(GapCurve(act, tokens, gaps, seed_gaps))
    return result


def _interval(d: PairedDifference) -> str:
    return "–" if math.isnan(d.ci95_low) else f"[{_fmt(d.ci95_low, sign=True)}, {_fmt(d.ci95_high, sign=True)}]"


def holm_by_point(curves: list[GapCurve]) -> dict[tuple[str, int], float]:
    """Holm's adjusted p of every point's paired test, over all points of all curves: a table that reads "the
    interval excludes zero at 1M tokens" picks one of many points, and the correction says what survives that."""
    points = [(c.activation, t, g.p_value) for c in curves for t, g in zip(c.tokens, c.gaps)]
    return {(act, t): adjusted for (act, t, _), adjusted in zip(points, holm([p for _, _, p in points]))}


def _p(d: PairedDifference, adjusted: float) -> str:
    return "–" if math.isnan(d.p_value) else f"{_fmt_p(d.p_value)} ({_fmt_p(adjusted)})"


def gap_markdown(curves: list[GapCurve], baseline: str, key: str = "val_loss") -> str:
    """Per activation: the gap at its largest and at the end, with 95% intervals, paired t-test p and Holm's p over
    every point of every curve, and the final/largest ratio (1 = the gap held; near 0 = it closed; negative = it
    reversed)."""
    adjusted = holm_by_point(curves)
    tests = sum(1 for value in adjusted.values() if not math.isnan(value))
    lines = [f"### Learning curves: {key} gap to {baseline} (paired by seed)", "",
             f"| activation | n | largest gap at tokens | largest gap | 95% CI | p (Holm) | final tokens | final gap "
             f"| 95% CI | p (Holm) | final / largest |",
             "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|"]
    for curve in curves:
        (t_max, g_max), (t_end, g_end) = curve.largest(), curve.final()
        ratio = g_end.mean_diff / g_max.mean_diff if g_max.mean_diff else math.nan
        lines.append(f"| {curve.activation} | {g_end.n} | {t_max:,} | {_fmt(g_max.mean_diff, sign=True)} "
                     f"| {_interval(g_max)} | {_p(g_max, adjusted[(curve.activation, t_max)])} | {t_end:,} "
                     f"| {_fmt(g_end.mean_diff, sign=True)} | {_interval(g_end)} "
                     f"| {_p(g_end, adjusted[(curve.activation, t_end)])} | {_fmt(ratio)} |")
    lines += ["", f"The intervals are pointwise. In parentheses: Holm's adjusted p over the {tests} paired tests of "
              "all points of all curves (`val_loss_gap.csv`), what survives choosing the point to report."
              if tests else "No point has two seeds or more: no test."]
    return "\n".join(lines) + "\n"


def gap_table(curves: list[GapCurve]) -> tuple[list[str], list[list]]:
    """(columns, rows) of every point of every gap curve: its mean, 95% interval, paired t-test p and Holm's p over all
    points (``holm_by_point``) and each seed's own gap (``seed_<k>``, None where that seed has no pair), the numbers
    behind the gap plot."""
    seeds = sorted({s for c in curves for s in c.seed_gaps})
    adjusted = holm_by_point(curves)
    columns = ["activation", "tokens", "n", "mean_gap", "ci95_low", "ci95_high", "p_value", "p_holm"] + [
        f"seed_{s}" for s in seeds]
    rows = []
    for curve in curves:
        for i, (tokens, gap) in enumerate(zip(curve.tokens, curve.gaps)):
            per_seed = [curve.seed_gaps[s][i] if s in curve.seed_gaps else None for s in seeds]
            rows.append([curve.activation, tokens, gap.n, gap.mean_diff, gap.ci95_low, gap.ci95_high, gap.p_value,
                         adjusted[(curve.activation, tokens)]] + per_seed)
    return columns, rows


def write_gap_csv(curves: list[GapCurve], path: Path) -> None:
    """``gap_table`` as CSV (an empty cell where a seed has no pair)."""
    columns, rows = gap_table(curves)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])

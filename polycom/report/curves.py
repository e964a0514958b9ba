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
from polycom.report.stats import PairedDifference, paired_difference
from polycom.report.tables import _fmt, ordered_activations


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


def gap_markdown(curves: list[GapCurve], baseline: str, key: str = "val_loss") -> str:
    """Per activation: the gap at its largest and at the end, with 95% intervals, and the final/largest ratio
    (1 = the gap held; near 0 = it closed; negative = it reversed)."""
    lines = [f"### Learning curves: {key} gap to {baseline} (paired by seed)", "",
             f"| activation | n | largest gap at tokens | largest gap | 95% CI | final tokens | final gap | 95% CI "
             f"| final / largest |",
             "|---|---:|---:|---:|---|---:|---:|---|---:|"]
    for curve in curves:
        (t_max, g_max), (t_end, g_end) = curve.largest(), curve.final()
        ratio = g_end.mean_diff / g_max.mean_diff if g_max.mean_diff else math.nan
        lines.append(f"| {curve.activation} | {g_end.n} | {t_max:,} | {_fmt(g_max.mean_diff, sign=True)} "
                     f"| {_interval(g_max)} | {t_end:,} | {_fmt(g_end.mean_diff, sign=True)} | {_interval(g_end)} "
                     f"| {_fmt(ratio)} |")
    return "\n".join(lines) + "\n"


def write_gap_csv(curves: list[GapCurve], path: Path) -> None:
    """Every point of every gap curve: its mean and 95% interval over seeds and each seed's own gap
    (``seed_<k>``, empty where that seed has no pair), the numbers behind the gap plot."""
    seeds = sorted({s for c in curves for s in c.seed_gaps})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["activation", "tokens", "n", "mean_gap", "ci95_low", "ci95_high"] + [f"seed_{s}" for s in seeds])
        for curve in curves:
            for i, (tokens, gap) in enumerate(zip(curve.tokens, curve.gaps)):
                per_seed = [curve.seed_gaps[s][i] if s in curve.seed_gaps else "" for s in seeds]
                writer.writerow([curve.activation, tokens, gap.n, gap.mean_diff, gap.ci95_low, gap.ci95_high] + per_seed)

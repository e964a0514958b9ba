"""PNG plots of a sweep: validation-loss curves per activation, their gap to a baseline, and downstream accuracy
bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from polycom.report.curves import GapCurve, seed_curves  # noqa: E402
from polycom.report.runs import variants  # noqa: E402
from polycom.report.stats import aggregate, by_activation  # noqa: E402
from polycom.report.tables import ordered_activations  # noqa: E402
from polycom.runs import ACTIVATION_ORDER  # noqa: E402


def activation_color(activation: str) -> str:
    """One color per activation in every plot of a study (its place in ACTIVATION_ORDER in matplotlib's
    cycle), so that PolyNorm is the same color in the loss curves, the gap panels and the bars."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if activation in ACTIVATION_ORDER:
        return cycle[ACTIVATION_ORDER.index(activation) % len(cycle)]
    # Another activation takes one of the colors the known ones leave free, chosen from its name so that it
    # is the same in every plot (several unknown activations may share one).
    spare = cycle[len(ACTIVATION_ORDER):] or cycle
    return spare[sum(map(ord, activation)) % len(spare)]


def _token_axis(ax) -> None:
    """x axis in training tokens, ticks written 2M, 500k (not 0.2 with a 1e7 offset)."""
    ax.set_xlabel("training tokens")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def plot_val_loss_curves(rows: list[dict], path: Path, skip_first_fraction: float = 0.1) -> None:
    """Mean validation loss per activation against tokens, with the t-based 95% interval over seeds as a band.

    Only token counts present in every seed's curve are plotted. The first ``skip_first_fraction`` of
    training is cut so the interesting end of the curves is readable.
    """
    curves = {act: list(by_seed.values()) for act, by_seed in seed_curves(rows).items()}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for act in ordered_activations(rows):
        common = sorted(set.intersection(*(set(c) for c in curves[act]))) if curves.get(act) else []
        if not common:
            continue
        start = common[-1] * skip_first_fraction
        tokens = np.array([t for t in common if t >= start])
        aggs = [aggregate([c[t] for c in curves[act]]) for t in tokens]
        color = activation_color(act)
        ax.plot(tokens, [a.mean for a in aggs], color=color, label=f"{act} (n={aggs[0].n})")
        if aggs[0].n > 1:
            ax.fill_between(tokens, [a.ci95_low for a in aggs], [a.ci95_high for a in aggs], color=color, alpha=0.2)
    _token_axis(ax)
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss (mean and 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gap_curves(curves: list[GapCurve], baseline: str, path: Path, key: str = "val_loss") -> None:
    """The paired gap to ``baseline`` (activation minus baseline, same seed) against tokens: a panel per
    activation (shared axes) with each seed's gap as a thin line, their mean and its t-based 95% interval over
    seeds as a band; zero marked. Panels, not one crowded axis: with two seeds the bands are wide (t = 12.7)
    and would hide the other activations' curves."""
    if not curves:
        return
    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.4, 3.6 * cols + 0.6), 2.9 * rows + 0.9),
                             sharex=True, sharey=True, squeeze=False)
    for i, (ax, curve) in enumerate(zip(axes.flat, curves)):
        color = activation_color(curve.activation)
        tokens = np.array(curve.tokens)
        for seed_gap in curve.seed_gaps.values():
            ax.plot(tokens, seed_gap, color=color, lw=0.7, alpha=0.45)
        ax.plot(tokens, [g.mean_diff for g in curve.gaps], color=color, lw=1.8)
        low, high = np.array([g.ci95_low for g in curve.gaps]), np.array([g.ci95_high for g in curve.gaps])
        if not np.isnan(low).all():
            ax.fill_between(tokens, low, high, color=color, alpha=0.15)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_title(f"{curve.activation} (n={curve.gaps[-1].n})", fontsize=10)
        ax.grid(alpha=0.3)
        if i + cols >= len(curves):  # lowest panel of its column
            _token_axis(ax)
            ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{key.replace('_', ' ')} − {baseline}")
    fig.suptitle(f"Gap to {baseline}, paired by seed: seeds (thin), mean (thick), 95% CI (band)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_downstream_bars(rows: list[dict], metrics: list[str], path: Path, labels: list[str] | None = None,
                         title: str = "Downstream accuracy") -> None:
    """Grouped bars: one group per metric (named by ``labels``, default the metric keys), one bar per activation,
    error bars = std over seeds."""
    acts = ordered_activations(rows)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(metrics) * len(acts) / 3), 4.5))
    width = 0.8 / max(1, len(acts))
    x = np.arange(len(metrics))
    for i, act in enumerate(acts):
        means, stds = [], []
        for metric in metrics:
            agg = aggregate(list(by_activation(rows, metric).get(act, {}).values()))
            means.append(agg.mean)
            stds.append(0.0 if np.isnan(agg.std) else agg.std)
        ax.bar(x + (i - (len(acts) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=act,
               color=activation_color(act))
    ax.set_xticks(x)
    ax.set_xticklabels(labels or metrics, rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (mean ± 1 std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=min(len(acts), 6), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_metric_by(rows: list[dict], key: str, path: Path, metric: str = "val_loss") -> None:
    """Final ``metric`` against the values of a swept config key (an lr grid's ``optim.lr``), a line per
    activation: mean over seeds with ±1 std error bars. Log x axis when the values are positive numbers
    spanning a factor of 4 or more, as learning rates do."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [row for row in rows if row.get(metric) is not None]
    values = [v for (v,) in variants(rows, [key])]
    numeric = all(isinstance(v, (int, float)) for v in values)
    for act in ordered_activations(rows):
        present = [v for v in values if any(r["activation"] == act and r[key] == v for r in rows)]
        aggs = [aggregate([float(r[metric]) for r in rows if r["activation"] == act and r[key] == v])
                for v in present]
        ax.errorbar(present if numeric else [str(v) for v in present], [a.mean for a in aggs],
                    yerr=[0.0 if np.isnan(a.std) else a.std for a in aggs], marker="o", capsize=3, label=act,
                    color=activation_color(act))
    if numeric and min(values) > 0 and max(values) >= 4 * min(values):
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"Final {metric.replace('_', ' ')} by {key} (mean ± 1 std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

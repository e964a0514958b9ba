"""PNG plots of a sweep: validation-loss curves per activation, their gap to a baseline, and downstream accuracy
bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from polycom.report.curves import GapCurve, gap_curves, seed_curves  # noqa: E402
from polycom.report.runs import variants  # noqa: E402
from polycom.report.stats import aggregate, by_activation  # noqa: E402
from polycom.report.tables import breakdown_sections, ordered_activations  # noqa: E402
from polycom.report.tasks import chance, is_alternative, is_count  # noqa: E402
from polycom.runs import ACTIVATION_ORDER, breakdown_parts  # noqa: E402


# every PNG is written at this resolution, at most this wide (1,600 px), with text of at least 9 pt
DPI = 100
MAX_WIDTH_INCHES = 16.0


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


def plot_val_loss_curves(rows: list[dict], path: Path, zoom_from_fraction: float = 0.5,
                         zoom_min_points: int = 8) -> None:
    """Mean validation loss per activation against tokens, with the t-based 95% interval over seeds as a band.

    The whole run from the first validation point (an early lead shows there) and, when the curves have at least
    ``zoom_min_points`` points, a second panel of the same curves from ``zoom_from_fraction`` of training on, its y
    axis fitted to that part so the end is readable. Only token counts present in every seed's curve are plotted.
    """
    curves = {act: list(by_seed.values()) for act, by_seed in seed_curves(rows).items()}
    series = []
    for act in ordered_activations(rows):
        common = sorted(set.intersection(*(set(c) for c in curves[act]))) if curves.get(act) else []
        if common:
            aggs = [aggregate([c[t] for c in curves[act]]) for t in common]
            series.append((act, np.array(common), aggs))
    zoomed = max((len(tokens) for _, tokens, _ in series), default=0) >= zoom_min_points
    fig, axes = plt.subplots(1, 2 if zoomed else 1, figsize=(12, 4.8) if zoomed else (7, 4.8), squeeze=False)
    full = axes[0, 0]
    zoomed_values = []
    for act, tokens, aggs in series:
        mean = np.array([a.mean for a in aggs])
        low, high = np.array([a.ci95_low for a in aggs]), np.array([a.ci95_high for a in aggs])
        late = tokens >= tokens[-1] * zoom_from_fraction
        color = activation_color(act)
        for ax, keep in ((full, np.ones_like(late)), *(((axes[0, 1], late),) if zoomed else ())):
            ax.plot(tokens[keep], mean[keep], color=color, marker="." if keep.sum() < 30 else None,
                    label=f"{act} (n={aggs[0].n})")
            if aggs[0].n > 1:
                ax.fill_between(tokens[keep], low[keep], high[keep], color=color, alpha=0.2)
        zoomed_values += list(mean[late]) + ([] if aggs[0].n < 2 else list(low[late]) + list(high[late]))
    for ax in axes.flat:
        _token_axis(ax)
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    full.set_title("Whole run")
    if zoomed:
        axes[0, 1].set_title(f"From {zoom_from_fraction:.0%} of training on (y axis zoomed)")
        values = [v for v in zoomed_values if np.isfinite(v)]
        if values:
            pad = 0.05 * (max(values) - min(values) or 1.0)
            axes[0, 1].set_ylim(min(values) - pad, max(values) + pad)
    full.legend(fontsize=9)
    fig.suptitle("Validation loss: mean over seeds, 95% CI band")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
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
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_downstream_bars(rows: list[dict], metrics: list[str], path: Path, labels: list[str] | None = None,
                         title: str = "Downstream accuracy") -> None:
    """Grouped bars: one group per metric (named by ``labels``, default the metric keys), one bar per activation,
    error bars = the t-based 95% interval of the mean over seeds, and a dashed line at each task's chance level
    (``polycom.report.tasks.chance``): most tasks sit on it at this scale, and the plot should show that. Wide
    enough for its bars and never wider than ``MAX_WIDTH_INCHES``; labels in 9 pt or more."""
    acts = ordered_activations(rows)
    width_inches = min(MAX_WIDTH_INCHES, max(7.0, 1.0 + 0.17 * len(metrics) * (len(acts) + 1.5)))
    fig, ax = plt.subplots(figsize=(width_inches, 5.2))
    width = 0.8 / max(1, len(acts))
    x = np.arange(len(metrics))
    for i, act in enumerate(acts):
        means, lows, highs = [], [], []
        for metric in metrics:
            agg = aggregate(list(by_activation(rows, metric).get(act, {}).values()))
            means.append(agg.mean)
            half = agg.ci95_high - agg.mean
            # no bar for one seed or a zero-width interval (LAMBADA's 0 everywhere): its caps would look like a line
            lows.append(agg.mean - agg.ci95_low if half > 0 else np.nan)
            highs.append(half if half > 0 else np.nan)
        n = max((len(by_activation(rows, m).get(act, {})) for m in metrics), default=0)
        ax.bar(x + (i - (len(acts) - 1) / 2) * width, means, width, yerr=[lows, highs], capsize=2,
               label=f"{act} (n={n})", color=activation_color(act), error_kw={"lw": 0.8})
    drawn = False
    for j, metric in enumerate(metrics):
        level = chance(metric)
        if level is not None:
            ax.hlines(level, j - 0.45, j + 0.45, colors="black", linestyles="--", lw=1.2,
                      label="chance" if not drawn else None, zorder=3)
            drawn = True
    ax.set_xticks(x)
    ax.set_xticklabels(labels or metrics, rotation=30, ha="right", fontsize=10)
    ax.set_xlim(-0.6, len(metrics) - 0.4)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    entries = len(acts) + drawn
    per_row = min(entries, max(2, int(width_inches / 1.9)))  # ~1.9 inches per legend entry at 9 pt
    rows_of_legend = -(-entries // per_row)
    ax.set_title(f"{title} (mean over seeds, 95% CI)", pad=8 + 16 * rows_of_legend)
    ax.legend(ncol=per_row, fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
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
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def accuracy_metrics(rows: list[dict]) -> list[str]:
    """Each task's headline accuracy present in the runs, per-group ones included: one metric per task (its
    other accuracy, acc or acc_norm, is in results.csv), no perplexities, counts or analyses."""
    keys = sorted({k for row in rows for k in row if "/" in k})
    return [k for k in keys if "ppl" not in k and "perplexity" not in k and not k.startswith("analysis/")
            and not is_count(k) and not is_alternative(k)]


def headline_metrics(rows: list[dict]) -> list[str]:
    """The task-level accuracy metrics: `<task>/<its headline>` keys."""
    return [k for k in accuracy_metrics(rows) if breakdown_parts(k) is None]


def write_plots(rows: list[dict], out: Path, baseline: str = "swiglu", by: list[str] = (),
                metrics: list[str] | None = None) -> list[Path]:
    """Every plot of a sweep into ``out`` (what ``scripts/plot.py`` writes): with ``by``, final validation loss
    against each key (``val_loss_by_<key>.png``); without, val_loss.png, val_loss_gap.png, downstream.png (``metrics``,
    default each task's headline) and a bar plot per breakdown of up to 20 groups (blimp_phenomenon.png)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if by:
        written = [out / f"val_loss_by_{key}.png" for key in by]
        for key, path in zip(by, written):
            plot_metric_by(rows, key, path)
        return written
    plot_val_loss_curves(rows, out / "val_loss.png")
    written = [out / "val_loss.png"]
    gaps = gap_curves(rows, baseline)
    if gaps:
        plot_gap_curves(gaps, baseline, out / "val_loss_gap.png")
        written.append(out / "val_loss_gap.png")
    metrics = metrics or headline_metrics(rows)
    if metrics:
        plot_downstream_bars(rows, metrics, out / "downstream.png")
        written.append(out / "downstream.png")
    for (task, key), group_metrics in breakdown_sections(accuracy_metrics(rows)).items():
        path = out / f"{task}_{key}.png"
        labels = ["/".join(breakdown_parts(m)[2:]) for m in group_metrics]
        plot_downstream_bars(rows, group_metrics, path, labels=labels, title=f"{task} accuracy by {key}")
        written.append(path)
    return written

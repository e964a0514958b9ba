"""The ladder's plots, from a ``polycom.report.ladder.fit_ladder`` result: loss against compute with each activation's
L(C) and its bootstrap band, and the compute multiplier against compute with its 95% band; a panel per budget line."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from polycom.report.plots import activation_color  # noqa: E402


def _panels(n: int, width: float = 5.2, height: float = 4.2):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def _log_axes(ax) -> None:
    """Log-log, y ticks written as plain numbers (3, 4, 5 rather than 3 x 10^0), no labels on x's minor ticks."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    # minor ticks: all labelled on an axis under a decade (a loss axis, 4 to 6), else at 2, 3 and 5 x 10^k only
    def minor(v, _):
        lo, hi = ax.get_ylim()
        keep = hi / lo < 10 or round(v / 10 ** math.floor(math.log10(v)), 6) in (2, 3, 5)
        return f"{v:g}" if v > 0 and keep else ""

    some = FuncFormatter(minor)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(some)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")


def plot_loss_vs_compute(result: dict, path: Path) -> None:
    """Cell means (error bars: std over seeds), each activation's fitted L(C) and its 95% band, log axes."""
    lines = result["budget_lines"]
    grid = np.array(result["curves"]["compute"])
    fig, axes = _panels(len(lines))
    for ax, budget in zip(axes, lines):
        for act, entry in result["activations"].items():
            cells = [c for c in entry["cells"] if c["budget"] == budget]
            if not cells:
                continue
            color = activation_color(act.split("-r")[0])
            c = np.array([x["compute"] for x in cells])
            ax.errorbar(c, [x["loss"] for x in cells], yerr=[x["loss_std"] or 0.0 for x in cells], fmt="o", ms=4,
                        color=color, label=act, capsize=2)
            band = result["curves"]["bands"].get(f"{budget}|{act}")
            if band:
                keep = (grid >= c.min() / 1.5) & (grid <= c.max() * 1.5)
                ax.plot(grid[keep], np.array(band["fit"])[keep], color=color, lw=1.2)
                ax.fill_between(grid[keep], np.array(band["low"])[keep], np.array(band["high"])[keep], color=color,
                                alpha=0.15)
        _log_axes(ax)
        ax.set_xlabel("training compute (FLOPs)")
        ax.set_ylabel("validation loss")
        ax.set_title(f"budget {budget}: L(C) = E + A·C^-α, 95% band")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_multiplier_vs_compute(result: dict, path: Path) -> None:
    """Each activation's compute multiplier against the baseline at every rung of a budget line, with its 95%
    interval as an error bar; 1 = as good as the baseline per FLOP. Dashed, open markers: the same against the
    baseline's L(C) pinned to its cells (``multiplier_vs_cells``, point estimates only)."""
    base = result["baseline"]
    lines = result["budget_lines"]
    fig, axes = _panels(len(lines))
    for ax, budget in zip(axes, lines):
        series = []
        for act, entry in result["activations"].items():
            cells = [c for c in entry["cells"] if c["budget"] == budget and "multiplier" in c]
            if act == base or not cells:
                continue
            c = np.array([x["compute"] for x in cells])
            m = np.array([x["multiplier"] for x in cells], dtype=float)
            lo, hi = (np.array([x["multiplier_ci95"][i] for x in cells], dtype=float) for i in (0, 1))
            vs_cells = np.array([x.get("multiplier_vs_cells", math.nan) for x in cells], dtype=float)
            series.append((act, c, m, lo, hi, vs_cells))
        # an interval with no upper end (the baseline's L(C) never reaches the loss) is drawn to the top and marked ^;
        # the activations are spread a little along x so that their intervals do not hide each other
        shown = [v for _, _, m, _, hi, mc in series for v in (*m, *hi, *mc) if np.isfinite(v) and v > 0]
        top = max(shown) * 1.3 if shown else 2.0
        for k, (act, c, m, lo, hi, mc) in enumerate(series):
            color = activation_color(act.split("-r")[0])
            x = c * 10 ** (0.02 * (k - (len(series) - 1) / 2))
            finite = np.isfinite(m)
            upper = np.where(np.isinf(hi), top, hi)
            ok = finite & np.isfinite(lo)
            ax.errorbar(x[ok], m[ok], yerr=[m[ok] - lo[ok], upper[ok] - m[ok]], fmt="none", ecolor=color, alpha=0.5,
                        capsize=2, lw=1)
            ax.plot(x[finite], m[finite], "o-", color=color, ms=4, label=act)
            ax.plot(x[np.isfinite(mc)], mc[np.isfinite(mc)], "s--", color=color, ms=4, mfc="none", lw=0.8, alpha=0.7)
            open_top = np.isinf(hi) & finite
            ax.plot(x[open_top], np.full(open_top.sum(), top), "^", color=color, ms=6)
        low = [v for _, _, m, lo, _, mc in series for v in (*m, *lo, *mc) if np.isfinite(v) and v > 0]
        ax.set_ylim(min(low) / 1.3 if low else 0.5, top * 1.1)
        pinned = any(np.isfinite(mc).any() for *_, mc in series)
        notes = [f"dashed, open: {base}'s L(C) pinned to its cells"] if pinned else []
        notes += ["^ : 95% interval open above"] if any(np.isinf(hi).any() for *_, hi, _ in series) else []
        if notes:
            ax.text(0.01, 0.99, "\n".join(notes), transform=ax.transAxes, va="top", fontsize=8)
        ax.axhline(1.0, color="black", lw=0.8)
        _log_axes(ax)
        ax.set_xlabel("training compute (FLOPs)")
        ax.set_ylabel(f"compute multiplier vs {base}")
        ax.set_title(f"budget {budget}: multiplier, 95% interval")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""The ladder's plots, from a ``polycom.report.ladder.fit_ladder`` result: loss against compute with each activation's
L(C) and its bootstrap band, and the compute multiplier against compute with its 95% band; a panel per budget line."""

from __future__ import annotations

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
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
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
    """Each activation's compute multiplier against the baseline at every rung of a budget line, its 95% interval
    as a band; 1 = as good as the baseline per FLOP."""
    base = result["baseline"]
    lines = result["budget_lines"]
    fig, axes = _panels(len(lines))
    for ax, budget in zip(axes, lines):
        for act, entry in result["activations"].items():
            if act == base:
                continue
            cells = [c for c in entry["cells"] if c["budget"] == budget and "multiplier" in c]
            if not cells:
                continue
            color = activation_color(act.split("-r")[0])
            c = np.array([x["compute"] for x in cells])
            m = np.array([x["multiplier"] for x in cells], dtype=float)
            lo = np.array([x["multiplier_ci95"][0] for x in cells], dtype=float)
            hi = np.array([x["multiplier_ci95"][1] for x in cells], dtype=float)
            finite = np.isfinite(m)
            ax.plot(c[finite], m[finite], "o-", color=color, ms=4, label=act)
            ok = np.isfinite(lo) & np.isfinite(hi) & finite
            ax.fill_between(c[ok], lo[ok], hi[ok], color=color, alpha=0.15)
        ax.axhline(1.0, color="black", lw=0.8)
        _log_axes(ax)
        ax.set_xlabel("training compute (FLOPs)")
        ax.set_ylabel(f"compute multiplier vs {base}")
        ax.set_title(f"budget {budget}: multiplier, 95% band")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

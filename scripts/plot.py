"""Plot a sweep: validation-loss curves per activation (mean and band over seeds, x in tokens), the paired gap of
each activation to a baseline along training (val_loss_gap.png, 95% bands over seeds), downstream accuracy bars
(downstream.png) and, for a task with per-group results of up to 20 groups, bars per group
(``<task>_<breakdown key>.png``, e.g. blimp_phenomenon.png).

    python scripts/plot.py outputs/compare_activations/multirun/<time> [more dirs] --out-dir experiments/my-study

With ``--by optim.lr`` (a sweep over another config key) it writes ``val_loss_by_optim.lr.png`` instead:
final validation loss against that key, a line per activation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polycom.report.curves import gap_curves
from polycom.report.plots import plot_downstream_bars, plot_gap_curves, plot_metric_by, plot_val_loss_curves
from polycom.report.runs import add_by_option, load_runs_or_exit
from polycom.report.tables import breakdown_sections
from polycom.runs import breakdown_parts


def accuracy_metrics(rows: list[dict]) -> list[str]:
    """The accuracy metrics present in the runs (``<task>/acc``, per-group ones included), not perplexities."""
    keys = sorted({k for row in rows for k in row if "/" in k})
    return [k for k in keys if "ppl" not in k and "perplexity" not in k and not k.startswith("analysis/")]


def headline_metrics(rows: list[dict]) -> list[str]:
    """The task-level accuracy metrics: `<task>/acc` style keys."""
    return [k for k in accuracy_metrics(rows) if breakdown_parts(k) is None]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--metrics", default=None, help="comma-separated downstream metrics (default: all accuracies)")
    parser.add_argument("--baseline", default="swiglu", help="activation the gap curves are taken against")
    add_by_option(parser)
    args = parser.parse_args(argv)
    rows = load_runs_or_exit(parser, args.roots, args.by)
    out = args.out_dir or args.roots[0]
    out.mkdir(parents=True, exist_ok=True)
    if args.by:
        written = [out / f"val_loss_by_{key}.png" for key in args.by]
        for key, path in zip(args.by, written):
            plot_metric_by(rows, key, path)
        print("wrote " + ", ".join(map(str, written)))
        return
    plot_val_loss_curves(rows, out / "val_loss.png")
    written = [out / "val_loss.png"]
    gaps = gap_curves(rows, args.baseline)
    if gaps:
        plot_gap_curves(gaps, args.baseline, out / "val_loss_gap.png")
        written.append(out / "val_loss_gap.png")
    metrics = args.metrics.split(",") if args.metrics else headline_metrics(rows)
    if metrics:
        plot_downstream_bars(rows, metrics, out / "downstream.png")
        written.append(out / "downstream.png")
    for (task, key), group_metrics in breakdown_sections(accuracy_metrics(rows)).items():
        path = out / f"{task}_{key}.png"
        labels = ["/".join(breakdown_parts(m)[2:]) for m in group_metrics]
        plot_downstream_bars(rows, group_metrics, path, labels=labels, title=f"{task} accuracy by {key}")
        written.append(path)
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()

"""Plot a sweep: validation-loss curves per activation (mean and 95% band over seeds, x in tokens; the whole run and
a zoomed panel of its later part), the paired gap of each activation to a baseline along training (val_loss_gap.png,
95% bands over seeds), downstream accuracy bars (downstream.png: each task's headline metric, 95% intervals, chance
lines) and, for a task with per-group results of up to 20 groups, bars per group (``<task>_<breakdown key>.png``,
e.g. blimp_phenomenon.png). Every PNG is at most 1,600 px wide, with text of 9 pt or more.

    python scripts/plot.py outputs/compare_activations/multirun/<time> [more dirs] --out-dir experiments/my-study

With ``--by optim.lr`` (a sweep over another config key) it writes ``val_loss_by_optim.lr.png`` instead:
final validation loss against that key, a line per activation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polycom.report.plots import write_plots
from polycom.report.runs import add_by_option, load_runs_or_exit


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--metrics", default=None,
                        help="comma-separated downstream metrics (default: each task's headline accuracy)")
    parser.add_argument("--baseline", default="swiglu", help="activation the gap curves are taken against")
    add_by_option(parser)
    args = parser.parse_args(argv)
    rows = load_runs_or_exit(parser, args.roots, args.by)
    out = args.out_dir or args.roots[0]
    metrics = args.metrics.split(",") if args.metrics else None
    written = write_plots(rows, out, args.baseline, args.by, metrics)
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()

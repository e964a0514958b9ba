"""Turn sweep runs into tables: one row per run, and per activation mean ± std and 95% intervals over
seeds, with paired differences against a baseline (same seed) and a paired t-test.

    python scripts/summarize.py outputs/compare_activations/multirun/2026-11-22_10-00-00 [more dirs ...] \
        --out-dir experiments/my-study [--baseline swiglu]

Writes results.csv (per run), summary.csv (per activation and metric) and summary.md into --out-dir
(default: the first folder given). summary.md ends with the learning-curve table: each activation's validation-loss
gap to the baseline where it is largest and at the end (paired by seed, 95% intervals); val_loss_gap.csv has
that gap at every validation point, its interval and each seed's own gap.

A sweep over something other than activation and seed (an lr grid) needs ``--by optim.lr``: each value
is then summarized on its own, with a grid of validation loss by activation and value on top. Without it,
two runs of one activation and seed are an error that names the config keys they differ in -- they would
otherwise be averaged as if they were seeds -- or, when they differ in none that changes what is trained, says it
is the same job run twice and which run is newer. Every run folder left out (unfinished, no validation loss, no
summary) is named on stderr with the reason.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polycom.report.curves import gap_curves, gap_markdown, write_gap_csv
from polycom.report.runs import add_by_option, load_runs_or_exit, write_results_csv
from polycom.report.tables import markdown, summary_rows, write_summary_csv


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="sweep or run folders (searched recursively)")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--baseline", default="swiglu")
    add_by_option(parser)
    args = parser.parse_args(argv)
    rows = load_runs_or_exit(parser, args.roots, args.by)
    out = args.out_dir or args.roots[0]
    out.mkdir(parents=True, exist_ok=True)
    write_results_csv(rows, out / "results.csv", args.by)
    summary = summary_rows(rows, args.baseline, args.by)
    write_summary_csv(summary, out / "summary.csv", args.by)
    text = markdown(summary, args.baseline, args.by)
    gaps = [] if args.by else gap_curves(rows, args.baseline)
    if gaps:
        text += "\n" + gap_markdown(gaps, args.baseline)
        write_gap_csv(gaps, out / "val_loss_gap.csv")
    (out / "summary.md").write_text(text)
    print(text)
    print(f"{len(rows)} runs -> {out}/results.csv, summary.csv, summary.md" + (", val_loss_gap.csv" if gaps else ""))


if __name__ == "__main__":
    main()

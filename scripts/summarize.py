"""Turn sweep runs into tables: one row per run, and per activation mean ± std and 95% intervals over
seeds, with paired differences against a baseline (same seed) and a paired t-test.

    python scripts/summarize.py outputs/compare_activations/multirun/2026-11-22_10-00-00 [more dirs ...] \
        --out-dir experiments/my-study [--baseline swiglu]

Writes results.csv (per run), summary.csv (per activation and metric) and summary.md into --out-dir
(default: the first folder given).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polycom.report.runs import load_runs, write_results_csv
from polycom.report.tables import markdown, summary_rows, write_summary_csv


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="sweep or run folders (searched recursively)")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--baseline", default="swiglu")
    args = parser.parse_args(argv)
    rows = load_runs(args.roots)
    if not rows:
        parser.error(f"no complete run (summary.json) found under {', '.join(map(str, args.roots))}")
    out = args.out_dir or args.roots[0]
    out.mkdir(parents=True, exist_ok=True)
    write_results_csv(rows, out / "results.csv")
    summary = summary_rows(rows, args.baseline)
    write_summary_csv(summary, out / "summary.csv")
    text = markdown(summary, args.baseline)
    (out / "summary.md").write_text(text)
    print(text)
    print(f"{len(rows)} runs -> {out}/results.csv, summary.csv, summary.md")


if __name__ == "__main__":
    main()

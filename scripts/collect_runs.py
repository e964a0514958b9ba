"""Copy the small result files of finished runs into a study folder, one sub-folder per run.

    python scripts/collect_runs.py outputs/compare_activations/multirun/<time> [more dirs] \
        --out-dir experiments/<yyyy-mm-dd>-<study>/runs

For every complete run found below the given folders (a ``summary.json`` with ``complete: true``) this
copies ``summary.json``, ``metrics.jsonl``, ``config.yaml`` and, when present, ``eval/`` and ``analysis/``
into ``<out-dir>/<activation>-s<seed>/`` (``...-s<seed>-lr0.004`` with ``--by optim.lr``) -- kilobytes per
run, safe to commit -- and leaves checkpoints, the HF export and W&B files where they are. A sweep run in several parts (say one seed per session) is
collected part by part into the same folder; ``scripts/summarize.py`` and ``scripts/plot.py`` then read
``<out-dir>`` like any sweep folder. Two runs for one study folder (the same job run twice, say a sweep relaunched
into a new folder, or runs differing in a key that needs ``--by``) and a study folder that already holds another
run are errors, found before anything is copied. Runs without a result (unfinished, no validation loss) are
named with the reason and left out.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from polycom.report.runs import (add_by_option, config_values, conflict_message, find_run_dirs, report_skipped,
                                 variant_name)
from polycom.runs import CONFIG, METRICS, SUMMARY, run_name

FILES = (SUMMARY, METRICS, CONFIG)
FOLDERS = ("eval", "analysis")


def study_name(summary: dict, variant: dict | None = None) -> str:
    """The run's folder in the study: ``run_name`` plus the values of the ``--by`` keys."""
    return run_name(summary["activation"], summary["seed"], summary.get("activation_order"),
                    variant_name(variant) if variant else None)


def plan(roots: list[Path], out_dir: Path, by: list[str] = ()) -> dict[Path, Path]:
    """``{run folder: its study folder}`` for every run with a result; raises (before anything is copied) when
    two runs would share a study folder or one holds another run already."""
    targets: dict[Path, list[Path]] = {}
    for run_dir in find_run_dirs(roots):
        if out_dir.resolve() in run_dir.resolve().parents:
            continue  # already collected
        summary = json.loads((run_dir / SUMMARY).read_text())
        targets.setdefault(out_dir / study_name(summary, config_values(run_dir, list(by))), []).append(run_dir)
    for target, runs in targets.items():
        if len(runs) > 1:
            raise SystemExit(f"not collecting anything: {conflict_message(runs, target.name)}")
        if (target / SUMMARY).is_file():
            old = json.loads((target / SUMMARY).read_text())
            new = json.loads((runs[0] / SUMMARY).read_text())
            if old.get("run_dir") != new.get("run_dir"):
                raise SystemExit(f"not collecting anything: {target} already holds the run {old.get('run_dir')}; "
                                 f"not overwriting it with {runs[0]} (the same job run twice, or a sweep over another "
                                 "config key, which needs --by that key)")
    return {runs[0]: target for target, runs in targets.items()}


def collect(roots: list[Path], out_dir: Path, by: list[str] = ()) -> list[Path]:
    written = []
    for run_dir, target in plan(roots, out_dir, by).items():
        target.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, target / name)
        for name in FOLDERS:
            if (run_dir / name).is_dir():
                shutil.copytree(run_dir / name, target / name, dirs_exist_ok=True)
        written.append(target)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="sweep or run folders (searched recursively)")
    parser.add_argument("--out-dir", type=Path, required=True)
    add_by_option(parser)
    args = parser.parse_args(argv)
    report_skipped(args.roots)
    try:
        written = collect(args.roots, args.out_dir, args.by)
    except ValueError as error:
        parser.error(str(error))
    if not written:
        parser.error(f"no complete run (summary.json) found under {', '.join(map(str, args.roots))}")
    print(f"collected {len(written)} runs into {args.out_dir}: " + ", ".join(p.name for p in written))


if __name__ == "__main__":
    main()

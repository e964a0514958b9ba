"""Copy the small result files of finished runs into a study folder, one sub-folder per run.

    python scripts/collect_runs.py outputs/compare_activations/multirun/<time> [more dirs] \
        --out-dir experiments/<yyyy-mm-dd>-<study>/runs

For every complete run found below the given folders (a ``summary.json`` with ``complete: true``) this
copies ``summary.json``, ``metrics.jsonl``, ``config.yaml`` and, when present, ``eval/`` and ``analysis/``
into ``<out-dir>/<activation>-s<seed>/`` (``...-s<seed>-lr0.004`` with ``--by optim.lr``) -- kilobytes per
run, safe to commit -- and leaves checkpoints, the HF export and W&B files where they are. A sweep run in several parts (say one seed per session) is
collected part by part into the same folder; ``scripts/summarize.py`` and ``scripts/plot.py`` then read
``<out-dir>`` like any sweep folder. A run folder that already holds a different run is an error.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from polycom.report.runs import add_by_option, config_values, find_run_dirs, variant_name
from polycom.runs import CONFIG, METRICS, SUMMARY, run_name

FILES = (SUMMARY, METRICS, CONFIG)
FOLDERS = ("eval", "analysis")


def study_name(summary: dict, variant: dict | None = None) -> str:
    """The run's folder in the study: ``run_name`` plus the values of the ``--by`` keys."""
    return run_name(summary["activation"], summary["seed"], summary.get("activation_order"),
                    variant_name(variant) if variant else None)


def collect(roots: list[Path], out_dir: Path, by: list[str] = ()) -> list[Path]:
    written = []
    for run_dir in find_run_dirs(roots):
        if out_dir.resolve() in run_dir.resolve().parents:
            continue  # already collected
        summary = json.loads((run_dir / SUMMARY).read_text())
        target = out_dir / study_name(summary, config_values(run_dir, list(by)))
        if (target / SUMMARY).is_file():
            old = json.loads((target / SUMMARY).read_text())
            if old.get("run_dir") != summary.get("run_dir"):
                raise SystemExit(f"{target} already holds the run {old.get('run_dir')}; not overwriting it with "
                                 f"{run_dir} (a sweep over another config key needs --by that key)")
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
    try:
        written = collect(args.roots, args.out_dir, args.by)
    except ValueError as error:
        parser.error(str(error))
    if not written:
        parser.error(f"no complete run (summary.json) found under {', '.join(map(str, args.roots))}")
    print(f"collected {len(written)} runs into {args.out_dir}: " + ", ".join(p.name for p in written))


if __name__ == "__main__":
    main()

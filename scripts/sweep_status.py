"""Where the jobs of a sweep stand: done, unfinished (running, or killed: with its step and last checkpoint),
not started, or missing (never launched), with step, tokens and validation loss; and any job that ran twice.

    python scripts/sweep_status.py outputs/train/multirun/<time>     # one sweep
    python scripts/sweep_status.py outputs/train                     # every sweep of a task (outputs/<task>)

The jobs are the ones the sweep was launched with (Hydra's multirun.yaml, expanded as its basic sweeper does),
matched to their folders by their overrides; a folder that no launched job explains is listed too. A job that ran
more than once (the same activation, seed and config in two folders: say a sweep relaunched into a new folder
before sweeps continued) is named with which run is newer and which complete. To continue a sweep, run the same
command with trainer.resume=auto. Needs no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polycom.report.status import DONE, STATES, duplicates, label, sweep_status
from polycom.sweeps import MULTIRUN_FILE


def find_sweeps(root: Path) -> list[Path]:
    """``root`` when it is a sweep folder, else the sweep folders up to two levels below it (``<task>/multirun/*``);
    none: ``root`` itself, read as a folder of runs."""
    if (root / MULTIRUN_FILE).is_file():
        return [root]
    found = sorted({p.parent for pattern in (f"*/{MULTIRUN_FILE}", f"*/*/{MULTIRUN_FILE}") for p in root.glob(pattern)})
    return found or [root]


def _fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def format_sweep(status) -> list[str]:
    counts = {state: sum(job.state == state for job in status.jobs) for state in STATES}
    lines = [f"{status.sweep}: {len(status.jobs)} job(s): " + ", ".join(f"{n} {state}" for state, n in counts.items()
                                                                        if n)
             + ("" if status.planned else " (folders found; no multirun.yaml of a basic sweep to list the launch)")]
    rows = [("job", "state", "step", "tokens", "val_loss", "folder / note")]
    for job in status.jobs:
        step = f"{_fmt(job.step)}/{_fmt(job.planned_steps)}" if job.step is not None else "-"
        where = job.run_dir.name if job.run_dir is not None else ""
        rows.append((label(job, status.varying), job.state, step, _fmt(job.tokens, ","), _fmt(job.val_loss, ".4f"),
                     "  ".join(x for x in (where, job.note) if x)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[5] for row in rows]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a sweep folder, or a task's output folder (outputs/<task>)")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        parser.error(f"{args.path} is not a folder")
    statuses = [sweep_status(sweep) for sweep in find_sweeps(args.path)]
    for status in statuses:
        print("\n".join(format_sweep(status)))
    repeated = duplicates([job for status in statuses for job in status.jobs])
    for message in repeated:
        print(f"duplicate: {message}")
    jobs = [job for status in statuses for job in status.jobs]
    done = sum(job.state == DONE for job in jobs)
    print(f"{done} of {len(jobs)} job(s) done" + (f"; {len(repeated)} job(s) ran more than once" if repeated else "")
          + ("" if done == len(jobs) else "; to finish: the same command with trainer.resume=auto"))


if __name__ == "__main__":
    main()

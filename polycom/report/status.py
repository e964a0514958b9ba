"""Where the runs of a sweep stand: done, unfinished (running or killed), not started, missing; and which jobs ran
twice. Read from the files the runs and Hydra leave (no torch): ``summary.json``, ``metrics.jsonl``,
``config.yaml``, checkpoint folder names and their ``trainer_state.json``, ``.hydra/overrides.yaml`` and the
sweep's ``multirun.yaml``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from polycom import sweeps
from polycom.report.runs import duplicate_message, run_config, same_runs
from polycom.runs import CONTINUED_IN, METRICS, export_complete, read_summary, summary_problem

DONE, UNFINISHED, NOT_STARTED, MISSING, CONTINUED = "done", "unfinished", "not started", "missing", "continued"
STATES = (DONE, UNFINISHED, NOT_STARTED, MISSING, CONTINUED)


@dataclass
class RunStatus:
    state: str  # DONE | UNFINISHED | NOT_STARTED | MISSING | CONTINUED
    run_dir: Path | None
    step: int | None = None
    planned_steps: int | None = None
    tokens: int | None = None
    val_loss: float | None = None  # the final one when done, else the last logged
    note: str = ""  # what is left, or where it went on
    overrides: tuple[str, ...] = ()  # the job's (sweep_identity)


@dataclass
class SweepStatus:
    sweep: Path
    jobs: list[RunStatus] = field(default_factory=list)
    varying: list[str] = field(default_factory=list)  # override keys that differ between the jobs
    planned: bool = False  # the job list comes from the launch (else: only the folders found)


def _checkpoint_steps(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in folder.glob("step_*") if p.is_dir() and p.name[5:].isdigit())


def _planned_steps(run_dir: Path, summary: dict | None, config: dict) -> int | None:
    if summary and summary.get("planned_steps"):
        return summary["planned_steps"]
    steps = _checkpoint_steps(run_dir)
    if steps:
        state = Path(run_dir) / "checkpoints" / f"step_{steps[-1]:08d}" / "trainer_state.json"
        try:
            return json.loads(state.read_text())["schedule"]["total_steps"]
        except (OSError, ValueError, KeyError):
            pass
    return config.get("trainer.max_steps")


def _last_records(run_dir: Path) -> tuple[dict, float | None]:
    """The last logged record, and the last validation loss logged."""
    path = Path(run_dir) / METRICS
    last, val = {}, None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            last = record
            val = record.get("val_loss", val)
    return last, val


def run_status(run_dir: Path) -> RunStatus:
    run_dir = Path(run_dir)
    overrides = sweeps.job_overrides(run_dir)
    identity = sweeps.sweep_identity(overrides) if overrides is not None else ()
    summary, config = read_summary(run_dir), run_config(run_dir)
    last, val = _last_records(run_dir)
    checkpoints = _checkpoint_steps(run_dir)
    if (run_dir / CONTINUED_IN).is_file() and not checkpoints and summary is None:
        return RunStatus(CONTINUED, run_dir, note=f"continued in {(run_dir / CONTINUED_IN).read_text().strip()}",
                         overrides=identity)
    planned = _planned_steps(run_dir, summary, config)
    downstream = config.get("eval.downstream") or []
    problem = summary_problem(summary, planned, downstream) if summary else None
    if summary is not None and problem is None:
        # a run's own folder (with checkpoints, not a study's copy of its small files) should hold its export
        export = bool(checkpoints) and config.get("trainer.save_hf", True) and not export_complete(run_dir)
        return RunStatus(UNFINISHED if export else DONE, run_dir, summary.get("steps"), planned, summary.get("tokens"),
                         summary.get("val_loss"), "no complete export (hf/): resume to export" if export else "",
                         identity)
    if summary is None and not last and not checkpoints:
        return RunStatus(NOT_STARTED, run_dir, 0, planned, note="no step logged: starting, or killed before its "
                         "first step", overrides=identity)
    if summary is None:
        age = time.time() - (run_dir / METRICS).stat().st_mtime if (run_dir / METRICS).exists() else None
        problem = "no summary: running, or killed" + (f" (last logged {age / 60:.0f} min ago)" if age else "")
    if checkpoints:
        problem += f"; last checkpoint at step {checkpoints[-1]}"
    step = summary.get("steps") if summary else last.get("step")
    tokens = summary.get("tokens") if summary else last.get("tokens")
    return RunStatus(UNFINISHED, run_dir, step, planned, tokens, val, problem, identity)


def job_folders(sweep: Path) -> list[Path]:
    """The job folders of a sweep (Hydra's ``.hydra/overrides.yaml``), or run folders found below it."""
    sweep = Path(sweep)
    jobs = sorted(p.parent.parent for p in sweep.glob(f"*/{sweeps.JOB_OVERRIDES}"))
    if jobs:
        return jobs
    return sorted({p.parent for name in ("summary.json", METRICS, "config.yaml") for p in sweep.rglob(name)
                   if not any(part.startswith(".") for part in p.relative_to(sweep).parts)})


def sweep_status(sweep: Path) -> SweepStatus:
    """Every job of a sweep: the ones launched (from ``multirun.yaml``) matched to their folders by their overrides,
    then any other folder found."""
    statuses = [run_status(d) for d in job_folders(sweep)]
    planned = sweeps.planned_jobs(sweep)
    result = SweepStatus(Path(sweep), planned=planned is not None)
    if planned is not None:
        for job in planned:
            identity = sweeps.sweep_identity(job)
            found = [s for s in statuses if s.overrides == identity and s.state != CONTINUED]
            result.jobs += found or [RunStatus(MISSING, None, overrides=identity, note="never started")]
            statuses = [s for s in statuses if s not in found]
    result.jobs += statuses
    keys = {sweeps.override_key(o) for job in result.jobs for o in job.overrides}

    def value(job, key):
        return next((o for o in job.overrides if sweeps.override_key(o) == key), None)

    result.varying = sorted(k for k in keys if len({value(job, k) for job in result.jobs}) > 1)
    return result


def duplicates(statuses: list[RunStatus]) -> list[str]:
    """A message per job that has more than one folder (the same job: ``polycom.config_diff.same_job`` of their
    configs, or the same overrides when a folder has no config yet)."""
    candidates = [s for s in statuses if s.run_dir is not None and s.state not in (MISSING, CONTINUED)]
    groups: list[list[RunStatus]] = []
    for status in candidates:
        for group in groups:
            other = group[0]
            both_configs = run_config(status.run_dir) and run_config(other.run_dir)
            if (same_runs(status.run_dir, other.run_dir) if both_configs
                    else status.overrides and status.overrides == other.overrides):
                group.append(status)
                break
        else:
            groups.append([status])
    return [duplicate_message([s.run_dir for s in group], label(group[0], []))
            for group in groups if len(group) > 1]


def label(status: RunStatus, varying: list[str]) -> str:
    """A job's name in a listing: its overrides of the keys that vary in the sweep (all of them without any)."""
    chosen = [o for o in status.overrides if sweeps.override_key(o) in varying] if varying else list(status.overrides)
    if chosen:
        return " ".join(chosen)
    return status.run_dir.name if status.run_dir is not None else "?"

"""Sweep folders: which folder a multirun writes to, and which jobs a sweep folder was launched with.

Hydra's default sweep folder, ``<log_dir>/<task_name>/multirun/<time>``, is new at every launch, so a sweep
relaunched after a crash would train every job again in a new folder. ``sweep_dir`` (the resolver behind
``hydra.sweep.dir`` in ``configs/hydra/default.yaml``) keeps a new, never reused folder for a fresh sweep and,
when the launch has ``trainer.resume=auto``, returns the newest earlier sweep folder of the same command: the
same task overrides, in any order, apart from the ones that only say how to resume or log (``IGNORED``). Every
job then resumes in its own folder: a finished one ends in seconds, a killed one continues from its last
checkpoint, a missing one starts (a job numbered otherwise, the overrides given in another order, finds its old
folder through ``polycom.train.resume``'s search for the same job beside it).

Torch-free (``scripts/sweep_status.py`` reads sweeps with it). The resolver is cached, so the launcher and every
job of the sweep see the same folder (Hydra copies the resolver cache into each job's config).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import OmegaConf

from polycom.config_diff import SESSION_KEYS, matches

log = logging.getLogger(__name__)

MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of a sweep launch, in the sweep folder
JOB_OVERRIDES = Path(".hydra") / "overrides.yaml"  # Hydra's record of a job's overrides, in the job folder
# overrides that do not make another sweep: how a session runs (resume, pause, progress bar), what to log
IGNORED = (*SESSION_KEYS, "logger", "hydra")
RESOLVER = "polycom_sweep_dir"


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def sweep_identity(overrides: Iterable[str]) -> tuple[str, ...]:
    """The overrides that make a sweep (or a job) what it is, sorted: equal for the same command."""
    return tuple(sorted(str(o) for o in overrides if not matches(override_key(str(o)), IGNORED)))


def launch_overrides(sweep: Path) -> list[str] | None:
    """The task overrides a sweep folder was (last) launched with, from Hydra's ``multirun.yaml``."""
    path = Path(sweep) / MULTIRUN_FILE
    if not path.is_file():
        return None
    task = OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task", default=None)
    return None if task is None else [str(o) for o in task]


def earlier_sweep(base: Path, overrides: Sequence[str]) -> Path | None:
    """The newest sweep folder in ``base`` launched with the same command (``sweep_identity``)."""
    wanted = sweep_identity(overrides)
    found = []
    for folder in Path(base).glob("*"):
        launched = launch_overrides(folder)
        if launched is not None and sweep_identity(launched) == wanted:
            found.append(((folder / MULTIRUN_FILE).stat().st_mtime, str(folder), folder))
    return max(found)[2] if found else None


def sweep_dir(base: str, overrides: Sequence[str], resume) -> str:
    """``hydra.sweep.dir``: with ``trainer.resume=auto`` the newest earlier sweep of the same command, else (or
    when there is none) ``<base>/<time>``, never a folder that exists already."""
    overrides = [str(o) for o in overrides]
    if resume == "auto":
        earlier = earlier_sweep(Path(base), overrides)
        if earlier is not None:
            log.info("trainer.resume=auto: continuing the sweep in %s", earlier)
            return str(earlier)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    folder, n = Path(base) / stamp, 1
    while folder.exists():
        folder, n = Path(base) / f"{stamp}_{n}", n + 1
    return str(folder)


def register_resolver() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, sweep_dir, use_cache=True)


def planned_jobs(sweep: Path) -> list[list[str]] | None:
    """Every job's overrides as Hydra's basic sweeper expands the launch (the config's ``hydra.sweeper.params``,
    then the command line); None when the sweep used another sweeper or cannot be expanded here."""
    path = Path(sweep) / MULTIRUN_FILE
    if not path.is_file():
        return None
    config = OmegaConf.load(path)
    target = OmegaConf.select(config, "hydra.sweeper._target_", default="")
    if not str(target).endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + (launch_overrides(sweep) or [])
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
        return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception as err:  # e.g. a glob sweep, which needs the config loader
        log.warning("%s: cannot list the sweep's jobs (%s)", sweep, err)
        return None


def job_overrides(job_dir: Path) -> list[str] | None:
    """The overrides a job folder was (last) run with (``.hydra/overrides.yaml``)."""
    path = Path(job_dir) / JOB_OVERRIDES
    if not path.is_file():
        return None
    return [str(o) for o in OmegaConf.load(path)]

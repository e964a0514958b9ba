"""Which checkpoint a run starts from (``trainer.resume``) and which run directory it writes to.

- ``null``: a fresh run. A run directory that already holds checkpoints is refused, so a run is never
  silently overwritten.
- ``auto``: the newest valid checkpoint of this run directory; if it has none, the newest run directory
  beside it whose configuration (ignoring ``trainer.resume``, logging and paths) is the same as this one's,
  and training continues there. No checkpoint anywhere: a fresh run.
- a path: that checkpoint folder, or the newest valid checkpoint of that run directory.

A run continued with another schedule (``trainer.max_steps`` raised to extend a finished run, another lr)
equals a run planned that way from the start only if the steps already trained had the learning rates the
new schedule gives them (``schedule_change``). When the newest checkpoint's did not, ``auto`` takes the newest
*kept* checkpoint whose steps did (wsd's pre-decay checkpoint: extending a wsd run branches off before its
decay); if there is none (cosine, whose curve stretches with the run) it continues from the newest with a
warning, and the run's summary records the first step trained with another learning rate.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from polycom.train import checkpoint as ckpt
from polycom.train.schedule import Schedule
from polycom.train.validate import ConfigError

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "config_fingerprint.txt"
_IGNORED_KEYS = ("logger", "paths")
_IGNORED_TRAINER_KEYS = ("resume", "stop_after", "progress_bar", "save_hf", "log_interval")


def config_fingerprint(cfg) -> str:
    """Hash of the settings that define a run's trajectory (not how it is logged or where it is written)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in _IGNORED_KEYS:
        container.pop(key, None)
    for key in _IGNORED_TRAINER_KEYS:
        container.get("trainer", {}).pop(key, None)
    container.get("tokenizer", {}).pop("cache_dir", None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_resume(cfg, run_dir: Path) -> tuple[Path, Path | None]:
    """(run directory to write to, checkpoint folder to load or None)."""
    resume = cfg.trainer.resume
    fingerprint = config_fingerprint(cfg)
    if resume is None:
        if ckpt.list_checkpoints(run_dir):
            raise ConfigError(f"{run_dir} already holds checkpoints; pass trainer.resume=auto to continue that run "
                              "or choose another hydra.run.dir")
        _write_fingerprint(run_dir, fingerprint)
        return run_dir, None
    if resume == "auto":
        found = _newest_continuable(run_dir, Schedule.for_run(cfg))
        if found is None:
            sibling = _newest_matching_run(run_dir, fingerprint)
            if sibling is not None:
                log.info("trainer.resume=auto: continuing %s", sibling)
                return sibling, ckpt.latest_valid_checkpoint(sibling)
        _write_fingerprint(run_dir, fingerprint)
        return run_dir, found
    path = Path(resume)
    if (path / ckpt.MANIFEST).exists() or path.name.startswith(ckpt.PREFIX):
        ckpt.verify(path)
        return path.parent.parent, path
    found = ckpt.latest_valid_checkpoint(path)
    if found is None:
        raise ConfigError(f"trainer.resume={resume}: no valid checkpoint there")
    return path, found


def schedule_change(trainer_state: dict, schedule: Schedule) -> int | None:
    """The first update already trained (before the checkpoint's step) whose learning rate under ``schedule``
    differs from the one it was trained with; None when they all agree or the checkpoint records no schedule."""
    saved = trainer_state.get("schedule")
    if saved is None:
        return None
    return Schedule.from_dict(saved).first_difference(schedule, trainer_state["step"])


def _newest_continuable(run_dir: Path, schedule: Schedule) -> Path | None:
    """The newest valid checkpoint, unless its steps followed another schedule and a kept one's did not."""
    newest = None
    for folder in ckpt.valid_checkpoints(run_dir):
        state = ckpt.read_trainer_state(folder)
        if newest is None:
            newest = folder
            if schedule_change(state, schedule) is None:
                return folder
        elif state.get("keep") and schedule_change(state, schedule) is None:
            log.warning("trainer.resume=auto: %s was trained with learning rates this run's schedule does not give "
                        "(it changed, e.g. trainer.max_steps); continuing from %s, kept before the decay, so the run "
                        "equals one planned this long from the start", newest, folder)
            return folder
    return newest


def _write_fingerprint(run_dir: Path, fingerprint: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FINGERPRINT_FILE).write_text(fingerprint)


def _newest_matching_run(run_dir: Path, fingerprint: str) -> Path | None:
    candidates = []
    for other in run_dir.parent.glob("*"):
        marker = other / FINGERPRINT_FILE
        if other == run_dir or not marker.is_file() or marker.read_text().strip() != fingerprint:
            continue
        newest = ckpt.latest_valid_checkpoint(other)
        if newest is not None:
            candidates.append((newest.stat().st_mtime, other))
    return max(candidates)[1] if candidates else None

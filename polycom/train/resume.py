"""Which checkpoint a run starts from (``trainer.resume``) and which run directory it writes to.

- ``null``: a fresh run. A run directory that already holds checkpoints is refused, so a run is never
  silently overwritten.
- ``auto``: the newest valid checkpoint of this run directory; if it has none, the newest run directory
  beside it that holds the same job (``polycom.config_diff.same_job``: the same settings of what is trained and
  for how long, however logged or launched), and training continues there (the folder given gets
  ``continued_in.txt`` naming it: a sweep job relaunched under another number). No checkpoint anywhere: a fresh
  run.
- a path: that checkpoint folder, or the newest valid checkpoint of that run directory.

Before anything is built, a resume compares the configuration the checkpoint was trained with (recorded in
its ``trainer_state.json``; ``config.yaml`` of the run for older checkpoints) with this one
(``polycom.config_diff``). A change of what is trained (model, data, seed, optimizer, ...) is refused with one
line naming each changed key, unless ``trainer.resume_allow_changes`` lists it (a key or a prefix such as
``data``); a change of how long or how observably it runs is allowed. Every accepted change is recorded in the
checkpoints and the summary (``config_changes``).

A run continued with another schedule (``trainer.max_steps`` raised to extend a finished run) equals a run
planned that way from the start only if the steps already trained had the learning rates the new schedule
gives them (``schedule_change``). When the newest checkpoint's did not, ``auto`` takes the newest
*kept* checkpoint whose steps did (wsd's pre-decay checkpoint: extending a wsd run branches off before its
decay); if there is none (cosine, whose curve stretches with the run) it continues from the newest with a
warning, and the run's summary records the first step trained with another learning rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from polycom import config_diff
from polycom.runs import CONFIG, CONTINUED_IN
from polycom.train import checkpoint as ckpt
from polycom.train.schedule import Schedule
from polycom.train.validate import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ResumePlan:
    """Where a run writes, the checkpoint it starts from, and what its checkpoints record of its configuration."""

    run_dir: Path
    checkpoint: Path | None
    config: dict  # this launch's resolved config
    config_changes: list[dict] = field(default_factory=list)  # accepted by this and earlier resumes of the run

    @property
    def record(self) -> dict:
        """Added to every checkpoint's trainer state: the next resume compares against it."""
        return {"config": self.config, "config_changes": self.config_changes}


def refuse_fresh_run_into(run_dir: Path) -> None:
    """A fresh run never writes into a folder that holds checkpoints (it would overwrite that run)."""
    if ckpt.list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints; pass trainer.resume=auto to continue that run "
                          "or choose another hydra.run.dir")


def resolve_resume(cfg, run_dir: Path) -> ResumePlan:
    """The run directory to write to and the checkpoint to load (None: a fresh run); raises ``ConfigError`` when
    the checkpoint was trained with a config this one changes in what it trains (``trainer.resume_allow_changes``
    not naming it)."""
    resume = cfg.trainer.resume
    config = OmegaConf.to_container(cfg, resolve=True)
    if resume is None:
        refuse_fresh_run_into(run_dir)
        return ResumePlan(run_dir, None, config)
    if resume == "auto":
        found = _newest_continuable(run_dir, Schedule.for_run(cfg))
        if found is None:
            sibling = _newest_matching_run(run_dir, config)
            if sibling is not None:
                log.info("trainer.resume=auto: continuing %s (the same job)", sibling)
                if run_dir.is_dir():
                    (run_dir / CONTINUED_IN).write_text(f"{sibling}\n")
                run_dir, found = sibling, ckpt.latest_valid_checkpoint(sibling)
    else:
        path = Path(resume)
        if (path / ckpt.MANIFEST).exists() or path.name.startswith(ckpt.PREFIX):
            ckpt.verify(path)
            run_dir, found = path.parent.parent, path
        else:
            found = ckpt.latest_valid_checkpoint(path)
            if found is None:
                raise ConfigError(f"trainer.resume={resume}: no valid checkpoint there")
            run_dir = path
    if found is None:
        return ResumePlan(run_dir, None, config)
    return ResumePlan(run_dir, found, config, accepted_changes(cfg, config, found))


def accepted_changes(cfg, config: dict, checkpoint: Path) -> list[dict]:
    """The config changes a resume from ``checkpoint`` makes, after the earlier ones it records; raises
    ``ConfigError`` when the checkpoint is past this config's budget, or naming every change of what is trained
    that ``trainer.resume_allow_changes`` does not allow."""
    state = ckpt.read_trainer_state(checkpoint)
    steps = Schedule.for_run(cfg).total_steps
    if state["step"] > steps:
        raise ConfigError(f"{checkpoint} is at step {state['step']}, past the {steps} steps this config trains "
                          "(trainer.max_steps / trainer.max_tokens): raise the budget or resume an earlier checkpoint")
    earlier = list(state.get("config_changes", []))
    saved = state.get("config")
    if saved is None:  # a checkpoint from before checkpoints recorded their config
        path = checkpoint.parent.parent / CONFIG
        if not path.is_file():
            log.warning("trainer.resume: %s records no config and its run has no %s: the config is not compared",
                        checkpoint, CONFIG)
            return earlier
        saved = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    changes, unmatched = config_diff.differences(saved, config)
    allow = list(cfg.trainer.resume_allow_changes or [])
    defining = [c for c in changes if c.kind == config_diff.DEFINES]
    refused = [c for c in defining if not config_diff.matches(c.key, allow)]
    if refused:
        raise ConfigError(
            f"trainer.resume: {checkpoint} was trained with another configuration, and continuing it with this one "
            f"changes what is trained: {'; '.join(c.describe() for c in refused)}. Start a new run (another "
            f"hydra.run.dir / sweep), or pass trainer.resume_allow_changes=[{','.join(c.key for c in refused)}] to "
            "continue anyway (recorded in summary.json)")
    for prefix in allow:
        if not any(config_diff.matches(c.key, [prefix]) for c in defining):
            log.warning("trainer.resume_allow_changes: %s did not change; nothing to allow", prefix)
    if unmatched:
        log.info("trainer.resume: not compared (a setting only one of the configs has): %s", ", ".join(unmatched))
    step = state["step"]
    for change in changes:
        (log.warning if change.kind == config_diff.DEFINES else log.info)(
            "trainer.resume: from step %d, %s (%s)", step, change.describe(),
            "allowed by trainer.resume_allow_changes" if change.kind == config_diff.DEFINES else change.kind)
    return earlier + [{"step": step, "key": c.key, "old": c.old, "new": c.new,
                       "override": c.kind == config_diff.DEFINES} for c in changes]


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


def _newest_matching_run(run_dir: Path, config: dict) -> Path | None:
    """The run directory beside ``run_dir`` with the newest valid checkpoint whose config is the same job."""
    candidates = []
    for other in run_dir.parent.glob("*"):
        saved = other / CONFIG
        if other == run_dir or not saved.is_file():
            continue
        if not config_diff.same_job(OmegaConf.to_container(OmegaConf.load(saved), resolve=False), config):
            continue
        newest = ckpt.latest_valid_checkpoint(other)
        if newest is not None:
            candidates.append((newest.stat().st_mtime, str(other), other))
    return max(candidates)[2] if candidates else None

"""Learning-rate schedules as pure functions of the step, so resuming needs no scheduler state.

A ``Schedule`` is everything that decides the learning rate of every update of a run. Checkpoints store it,
so a resume can tell whether the steps already trained followed the schedule it is about to continue with
(``first_difference``): extending a finished run by raising ``trainer.max_steps`` keeps the trajectory of a
run planned that long from the start only if the learning rates of the steps already taken stay the same.
That holds for ``constant``; for ``wsd`` up to the start of the decay (hence the kept pre-decay checkpoint);
never for ``cosine``, whose whole curve stretches with the length of training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SCHEDULES = ("cosine", "wsd", "constant")


def total_steps(trainer_cfg) -> int:
    """Optimizer steps of a run: ``trainer.max_steps``, else ``trainer.max_tokens`` rounded up to whole steps."""
    if trainer_cfg.max_steps is not None:
        return int(trainer_cfg.max_steps)
    tokens_per_step = trainer_cfg.global_batch_size * trainer_cfg.seq_len
    return -(-int(trainer_cfg.max_tokens) // tokens_per_step)


def warmup_steps_for(schedule_cfg, total_steps: int, tokens_per_step: int) -> int:
    """Resolve the one warmup setting given (steps, tokens or a fraction of training) to steps."""
    if schedule_cfg.warmup_steps is not None:
        return int(schedule_cfg.warmup_steps)
    if schedule_cfg.warmup_tokens is not None:
        return math.ceil(schedule_cfg.warmup_tokens / tokens_per_step)
    return int(round((schedule_cfg.warmup_fraction or 0.0) * total_steps))


def wsd_decay_steps(total_steps: int, decay_fraction: float) -> int:
    return max(1, int(round(decay_fraction * total_steps)))


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, name: str, min_lr_ratio: float = 0.1,
                  decay_fraction: float = 0.2) -> float:
    """Multiplier of the peak learning rate for the update made at ``step`` (0-based).

    cosine: linear warmup, then cosine decay to ``min_lr_ratio`` at the last step.
    wsd: linear warmup, constant, then a linear decay to ``min_lr_ratio`` over the last ``decay_fraction``.
    constant: linear warmup, then constant.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    if name == "cosine":
        span = max(1, total_steps - 1 - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "wsd":
        decay_steps = wsd_decay_steps(total_steps, decay_fraction)
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return 1.0 - (1.0 - min_lr_ratio) * progress
    raise ValueError(f"schedule.name={name!r} is not one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class Schedule:
    name: str
    total_steps: int
    warmup_steps: int
    peak_lr: float
    min_lr_ratio: float
    decay_fraction: float

    @classmethod
    def for_run(cls, cfg) -> "Schedule":
        """The schedule of a composed training config (``schedule``, ``optim.lr`` and the trainer's budget)."""
        steps = total_steps(cfg.trainer)
        tokens_per_step = cfg.trainer.global_batch_size * cfg.trainer.seq_len
        return cls(name=cfg.schedule.name, total_steps=steps,
                   warmup_steps=warmup_steps_for(cfg.schedule, steps, tokens_per_step), peak_lr=float(cfg.optim.lr),
                   min_lr_ratio=float(cfg.schedule.min_lr_ratio), decay_fraction=float(cfg.schedule.decay_fraction))

    @classmethod
    def from_dict(cls, values: dict) -> "Schedule":
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def lr(self, step: int) -> float:
        """Learning rate of the update made at ``step`` (0-based)."""
        return self.peak_lr * lr_multiplier(step, self.total_steps, self.warmup_steps, self.name, self.min_lr_ratio,
                                            self.decay_fraction)

    @property
    def decay_start(self) -> int | None:
        """wsd: the number of updates of the stable phase (the next one is the first decayed); else None."""
        if self.name != "wsd":
            return None
        start = self.total_steps - wsd_decay_steps(self.total_steps, self.decay_fraction)
        return start if start > self.warmup_steps else None

    def first_difference(self, other: "Schedule", steps: int) -> int | None:
        """The first of the updates ``0 .. steps-1`` whose learning rate differs between the two, or None."""
        for step in range(steps):
            a, b = self.lr(step), other.lr(step)
            if abs(a - b) > 1e-12 * max(abs(a), abs(b)):
                return step
        return None

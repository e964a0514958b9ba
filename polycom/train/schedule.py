"""Learning-rate schedules as pure functions of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd", "constant")


def warmup_steps_for(schedule_cfg, total_steps: int, tokens_per_step: int) -> int:
    """Resolve the one warmup setting given (steps, tokens or a fraction of training) to steps."""
    if schedule_cfg.warmup_steps is not None:
        return int(schedule_cfg.warmup_steps)
    if schedule_cfg.warmup_tokens is not None:
        return math.ceil(schedule_cfg.warmup_tokens / tokens_per_step)
    return int(round((schedule_cfg.warmup_fraction or 0.0) * total_steps))


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
        decay_steps = max(1, int(round(decay_fraction * total_steps)))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return 1.0 - (1.0 - min_lr_ratio) * progress
    raise ValueError(f"schedule.name={name!r} is not one of {', '.join(SCHEDULES)}")

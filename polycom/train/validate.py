"""Checks of a composed training config that types alone cannot express, run before anything is built.

Each failure raises ``ConfigError`` whose message names the config key, the value and what is valid.
"""

from __future__ import annotations

from polycom.model.config import check_schema
from polycom.train.tracking import SINKS
from polycom.train.schedule import SCHEDULES, total_steps, warmup_steps_for

MIXED_PRECISION = ("no", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    pass


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_config(cfg, world_size: int = 1) -> None:
    act, model, trainer, optim, sched, ev = cfg.activation, cfg.model, cfg.trainer, cfg.optim, cfg.schedule, cfg.eval

    try:
        check_schema(model, act)
    except ValueError as err:
        raise ConfigError(str(err)) from err

    _check(trainer.seq_len > 1, f"trainer.seq_len={trainer.seq_len} must be > 1")
    _check(trainer.seq_len <= model.max_position_embeddings,
           f"trainer.seq_len={trainer.seq_len} exceeds model.max_position_embeddings={model.max_position_embeddings}")
    _check(trainer.max_steps is not None or trainer.max_tokens is not None,
           "set a training budget: trainer.max_steps or trainer.max_tokens (max_steps wins when both are set)")
    budget = trainer.max_steps if trainer.max_steps is not None else trainer.max_tokens
    _check(budget > 0, f"the training budget must be > 0 (trainer.max_steps/max_tokens={budget})")
    _check(trainer.micro_batch_size > 0, f"trainer.micro_batch_size={trainer.micro_batch_size} must be > 0")
    per_step = trainer.micro_batch_size * world_size
    _check(trainer.global_batch_size > 0 and trainer.global_batch_size % per_step == 0,
           f"trainer.global_batch_size={trainer.global_batch_size} is not a multiple of trainer.micro_batch_size="
           f"{trainer.micro_batch_size} x {world_size} process(es) = {per_step}")
    _check(trainer.mixed_precision in MIXED_PRECISION,
           f"trainer.mixed_precision={trainer.mixed_precision!r}; valid: {', '.join(MIXED_PRECISION)}")
    _check(trainer.device in DEVICES, f"trainer.device={trainer.device!r}; valid: {', '.join(DEVICES)}")
    _check(trainer.grad_clip is None or trainer.grad_clip > 0, f"trainer.grad_clip={trainer.grad_clip} must be > 0 or null")
    _check(trainer.checkpoint_interval is None or trainer.checkpoint_interval > 0,
           f"trainer.checkpoint_interval={trainer.checkpoint_interval} must be > 0 or null")
    _check(trainer.log_interval > 0, f"trainer.log_interval={trainer.log_interval} must be > 0")
    _check(trainer.max_consecutive_nonfinite > 0,
           f"trainer.max_consecutive_nonfinite={trainer.max_consecutive_nonfinite} must be > 0")

    _check(optim.lr > 0, f"optim.lr={optim.lr} must be > 0")
    _check(optim.weight_decay >= 0, f"optim.weight_decay={optim.weight_decay} must be >= 0")
    _check(0 <= optim.beta1 < 1 and 0 <= optim.beta2 < 1, f"optim.beta1/beta2=({optim.beta1}, {optim.beta2}) must be in [0, 1)")

    _check(sched.name in SCHEDULES, f"schedule.name={sched.name!r} is unknown; valid: {', '.join(SCHEDULES)}")
    _check(0 <= sched.min_lr_ratio <= 1, f"schedule.min_lr_ratio={sched.min_lr_ratio} must be in [0, 1]")
    _check(0 < sched.decay_fraction <= 1, f"schedule.decay_fraction={sched.decay_fraction} must be in (0, 1]")
    set_warmups = [k for k in ("warmup_steps", "warmup_tokens", "warmup_fraction") if sched[k] is not None]
    steps = total_steps(trainer)
    warmup = warmup_steps_for(sched, steps, trainer.global_batch_size * trainer.seq_len)
    _check(0 <= warmup < steps or (warmup == 0),
           f"the warmup ({warmup} steps from schedule.{set_warmups[0] if set_warmups else 'warmup'}) must be shorter "
           f"than training ({steps} steps)")

    _check(ev.val_tokens >= trainer.seq_len,
           f"eval.val_tokens={ev.val_tokens} must be at least one sequence (trainer.seq_len={trainer.seq_len})")
    _check(ev.interval is None or ev.interval > 0, f"eval.interval={ev.interval} must be > 0 or null")
    _check(ev.batch_size > 0, f"eval.batch_size={ev.batch_size} must be > 0")
    if ev.downstream:
        from polycom.eval import TASKS

        unknown = [t for t in ev.downstream if t not in TASKS]
        _check(not unknown, f"eval.downstream has unknown task(s) {unknown}; valid: {', '.join(TASKS)}")
        from polycom.eval.downstream import TOO_LONG

        _check(ev.downstream_too_long in TOO_LONG,
               f"eval.downstream_too_long={ev.downstream_too_long!r}; valid: {', '.join(TOO_LONG)}")
        if ev.data_dir is not None:  # local sets: all present now, not at the end of training
            from polycom.eval.sources import local_path
            from polycom.eval.tasks import get_task

            for name in ev.downstream:
                for source in get_task(name).sources:
                    try:
                        local_path(name, source, ev.data_dir)
                    except FileNotFoundError as err:
                        raise ConfigError(f"eval.data_dir: {err} (set eval.data_dir=null to read the Hub)") from err

    loggers = ("none", *SINKS)
    _check(cfg.logger.name in loggers, f"logger.name={cfg.logger.name!r}; valid: {', '.join(loggers)}")
    _check(cfg.logger.mode in WANDB_MODES, f"logger.mode={cfg.logger.mode!r}; valid: {', '.join(WANDB_MODES)}")

    tok = cfg.tokenizer
    if tok.kind == "bpe":
        _check(tok.vocab_size >= 257,
               f"tokenizer.vocab_size={tok.vocab_size} is smaller than the 256 byte tokens plus <|endoftext|>")

    from polycom.data.config import validate_data_config

    try:
        validate_data_config(cfg.data)
    except ValueError as err:
        raise ConfigError(str(err)) from err

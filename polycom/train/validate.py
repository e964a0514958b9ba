"""Checks of a composed training config that types alone cannot express, run before anything is built.

Each failure raises ``ConfigError`` whose message names the config key, the value and what is valid. The schema
(``polycom.train.config``) already refuses unknown keys while Hydra composes, except those added with ``+key=`` or
``++key=`` (Hydra's own advice for a key it does not know): ``check_known_keys`` refuses those, with the closest
known key (``suggest``).
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import lru_cache

from omegaconf import DictConfig, OmegaConf

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


@lru_cache(maxsize=1)
def schema_keys() -> tuple[str, ...]:
    """Every dotted key of the training config schema (``trainer.max_steps``, ``model.hidden_size``, ...)."""
    from polycom.train.config import TrainConfig

    keys = []

    def walk(node, prefix):
        for key in node:
            keys.append(prefix + key)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
                walk(child, f"{prefix}{key}.")

    walk(OmegaConf.structured(TrainConfig), "")
    return tuple(keys)


def suggest(key: str) -> str | None:
    """The schema key(s) closest to an unknown ``key``: a near spelling in the same section (``trainer.max_step`` ->
    ``trainer.max_steps``), else the same name in other sections (``trainer.lr`` -> ``optim.lr``, or several joined
    by "or"), else a near spelling anywhere; None when nothing is close."""
    known = schema_keys()
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if close:
        return f"{parent}.{close[0]}" if parent else close[0]
    elsewhere = [k for k in known if k.rpartition(".")[2] == leaf]
    if elsewhere:
        return " or ".join(elsewhere)
    sections = {key.rsplit(".", n)[0] for n in range(1, key.count(".") + 1)}  # the key's own sections: no news
    close = difflib.get_close_matches(key, [k for k in known if k not in sections], n=1, cutoff=0.75)
    return close[0] if close else None


def unknown_key_message(key: str) -> str:
    hint = suggest(key)
    return f"{key} is not a config key" + (f"; did you mean {hint}?" if hint else
                                           " (the keys are listed in polycom/train/config.py)")


def check_known_keys(cfg) -> None:
    """Refuse keys the schema does not declare (added with ``+key=`` on the command line)."""

    def walk(node, prefix):
        fields = {f.name for f in dataclasses.fields(OmegaConf.get_type(node))}
        for key in node:
            if key not in fields:
                raise ConfigError(unknown_key_message(prefix + key))
            child = node._get_node(key)
            if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
                walk(child, f"{prefix}{key}.")

    if dataclasses.is_dataclass(OmegaConf.get_type(cfg)):
        walk(cfg, "")


def _batch_fix(trainer, world_size: int) -> str:
    """How to make the global batch divisible: the next multiple, or a micro-batch that divides it."""
    per_step = trainer.micro_batch_size * world_size
    fixes = [f"set trainer.global_batch_size={max(1, -(-trainer.global_batch_size // per_step)) * per_step} "
             f"(any multiple of {per_step})"]
    if trainer.global_batch_size > 0 and trainer.global_batch_size % world_size == 0:
        per_process = trainer.global_batch_size // world_size
        micro = max(m for m in range(1, min(trainer.micro_batch_size, per_process) + 1) if per_process % m == 0)
        fixes.append(f"trainer.micro_batch_size={micro} (it must divide global_batch_size / processes = {per_process})")
    return " or ".join(fixes)


def validate_config(cfg, world_size: int = 1) -> None:
    check_known_keys(cfg)
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
           f"{trainer.micro_batch_size} x {world_size} process(es) = {per_step}: {_batch_fix(trainer, world_size)}")
    from polycom.model.checkpointing import CHECKPOINTING_MODES

    _check(trainer.activation_checkpointing in CHECKPOINTING_MODES,
           f"trainer.activation_checkpointing={trainer.activation_checkpointing!r}; valid: {', '.join(CHECKPOINTING_MODES)}")
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
        validate_data_config(cfg.data, cfg.tokenizer)
    except ValueError as err:
        raise ConfigError(str(err)) from err

"""Which settings of a training config define what a run trains, and how two configs differ in them.

Torch-free: the trainer's resume (``polycom.train.resume``) and the reports (duplicate runs in a sweep) use it.

Every dotted key of a resolved config is of one kind:

- ``observes``: how the run is logged, checkpointed, evaluated, launched or computed, not what it learns:
  ``logger``, ``paths``, ``task_name``, ``eval`` (all but ``eval.val_tokens``), checkpoint interval and count,
  HF export, compile, device, micro-batch size and activation checkpointing (memory, not the update), the
  tokenizer cache, data prefetching, and ``parallel`` (DDP or FSDP: the same updates, distributed otherwise;
  whether a checkpoint's layout loads under the other is the checkpoint loader's to check; FSDP's
  ``param_dtype`` / ``reduce_dtype`` are precision, so ``defines``). A resume may change them.
- ``extends``: the length of the run (``trainer.max_steps`` / ``trainer.max_tokens``). A resume may change it;
  whether the learning rates of the steps already trained still hold is the schedule's business
  (``polycom.train.resume.schedule_change``).
- ``defines``: everything else (model, activation, data, tokenizer, seed, optimizer, batch shape, schedule
  shape, precision, gradient clipping, the validation budget, and any key added later): a resume that changes
  one would continue another run's weights as if they were this one's; refused unless the user names it.

A key listed nowhere is ``defines``: a new setting is safe by default. The session keys (``trainer.resume``,
``resume_allow_changes``, ``stop_after``, ``progress_bar``) say how one launch runs and are not compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

OBSERVES, EXTENDS, DEFINES = "observes", "extends", "defines"
# never compared: how this session was launched (how to resume, when to pause, a progress bar), not the run
SESSION_KEYS = ("trainer.resume", "trainer.resume_allow_changes", "trainer.stop_after", "trainer.progress_bar")
_EXTENDS = ("trainer.max_steps", "trainer.max_tokens")
_OBSERVES = ("task_name", "logger", "paths", "eval", "parallel", "hydra", "run_dir",
             "trainer.checkpoint_interval", "trainer.keep_checkpoints", "trainer.log_interval",
             "trainer.save_hf", "trainer.max_consecutive_nonfinite", "trainer.compile",
             "trainer.device", "trainer.micro_batch_size", "trainer.activation_checkpointing",
             "tokenizer.cache_dir", "data.tokenize_batch_size", "data.prefetch_blocks", "optim.fused")
# the validation loss of every run is on this many tokens; FSDP's compute and reduce precisions change the updates
_DEFINES_INSIDE_OBSERVES = ("eval.val_tokens", "parallel.param_dtype", "parallel.reduce_dtype")


def matches(key: str, prefixes: Iterable[str]) -> bool:
    """``key`` is one of ``prefixes`` or lies below one (``data`` matches ``data.source``, not ``database``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def kind(key: str) -> str | None:
    """``observes`` / ``extends`` / ``defines`` for a dotted key; None for a session key (``SESSION_KEYS``)."""
    if matches(key, SESSION_KEYS):
        return None
    if matches(key, _EXTENDS):
        return EXTENDS
    if matches(key, _OBSERVES) and not matches(key, _DEFINES_INSIDE_OBSERVES):
        return OBSERVES
    return DEFINES


def flatten(config: Mapping) -> dict[str, Any]:
    """``{"trainer": {"seq_len": 256}}`` -> ``{"trainer.seq_len": 256}``; lists and empty mappings are values."""
    flat: dict[str, Any] = {}

    def walk(node, prefix):
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = dict(node) if isinstance(node, Mapping) else node

    walk(config, "")
    return flat


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    kind: str

    def describe(self) -> str:
        return f"{self.key}: {_short(self.old)} -> {_short(self.new)}"


def differences(old: Mapping, new: Mapping) -> tuple[list[Change], list[str]]:
    """The keys whose values differ between two (nested or flat) configs, sorted, and the keys only one of them
    has (a setting added or removed since: not comparable, reported apart)."""
    a, b = flatten(old), flatten(new)
    changes = [Change(k, a[k], b[k], kind(k)) for k in sorted(a.keys() & b.keys())
               if kind(k) is not None and a[k] != b[k]]
    unmatched = sorted(k for k in a.keys() ^ b.keys() if kind(k) is not None)
    return changes, unmatched


def same_job(a: Mapping, b: Mapping) -> bool:
    """Two configs train the same thing for as long (they differ in no ``defines`` or ``extends`` key): runs of
    them are duplicates however they were logged, evaluated or launched. Keys only one has are not compared."""
    return not any(change.kind in (DEFINES, EXTENDS) for change in differences(a, b)[0])


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."

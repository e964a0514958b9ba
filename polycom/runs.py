"""The run record: what a training run leaves in its folder and how the rest of the project reads it back.

Torch-free, so ``polycom.report`` and ``scripts/collect_runs.py`` depend on this contract and not on the trainer.

- ``summary.json`` (``SUMMARY``): one ``RunSummary``; its ``metrics`` are flattened into the top level, so a
  downstream result reads ``summary["arc_easy/acc"]``.
- ``metrics.jsonl`` (``METRICS``): one JSON object per logged step, always with ``step`` and ``tokens``.
- ``config.yaml`` (``CONFIG``): the resolved training config.

Metric keys: ``<task>/<metric>`` for downstream results (``arc_easy/acc``, ``blimp/acc``),
``<task>/<breakdown key>/<group>/<metric>`` for a task's per-group results (``blimp/phenomenon/anaphor_agreement/acc``,
``blimp/paradigm/adjunct_island/acc``, ``mmlu/subject/anatomy/acc``),
``polycom/layer<i>/<coefficient>`` for activation coefficients and ``moe/layer<i>/<load stat>`` for expert load
(per-step diagnostics, kept out of the summary), ``analysis/<name>`` for the analyses of ``scripts/analyze.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SUMMARY, METRICS, CONFIG = "summary.json", "metrics.jsonl", "config.yaml"
DIAGNOSTIC_PREFIXES = ("polycom/", "moe/")
DEFAULT_ORDER = 3
# the order of activations in tables and plots: the registry's (``polycom.model.activations.ACTIVATIONS``, checked
# by a test), spelled out here so that reading runs needs no torch
ACTIVATION_ORDER = ("relu", "gelu", "swiglu", "relu2", "polyrelu", "polynorm")


def is_result_metric(key: str) -> bool:
    """A ``<group>/<name>`` metric that belongs in a summary (downstream, analysis), not a per-step diagnostic."""
    return "/" in key and not key.startswith(DIAGNOSTIC_PREFIXES)


def breakdown_parts(key: str) -> tuple[str, str, str, str] | None:
    """``(task, breakdown key, group, metric)`` of a per-group result metric, None for any other key."""
    parts = key.split("/")
    return tuple(parts) if len(parts) == 4 and is_result_metric(key) else None


def run_name(activation: str, seed: int, order: int | None = None, variant: str | None = None) -> str:
    """``<activation>[-r<order>]-s<seed>[-<variant>]``: the name of a run's folder in a study and of its W&B run.
    ``order`` is the PolyCom order (null for activations without one), named only when not the default 3."""
    suffix = f"-r{order}" if order not in (None, DEFAULT_ORDER) else ""
    return f"{activation}{suffix}-s{seed}" + (f"-{variant}" if variant else "")


@dataclass
class RunSummary:
    activation: str
    activation_order: int | None  # the PolyCom order; None for activations without one
    seed: int
    model: dict
    ffn_hidden_size: int  # the FFN's (one expert's) real hidden width
    vocab_size: int
    num_params: int
    num_params_active: int
    num_params_embedding: int
    num_params_matmul: int
    tokens: int
    steps: int
    val_loss: float | None
    val_ppl: float | None
    val_tokens: int
    final_train_loss: float | None
    nonfinite_steps: int
    schedule_changed_at_step: int | None  # first step trained with another lr than this run's schedule gives
    complete: bool
    wall_seconds: float
    world_size: int
    run_dir: str
    code_version: str | None
    downstream_error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # result metrics (``is_result_metric``)

    def to_dict(self) -> dict:
        values = asdict(self)
        metrics = values.pop("metrics")
        if values["downstream_error"] is None:
            values.pop("downstream_error")
        return {**values, **metrics}

    def name(self) -> str:
        return run_name(self.activation, self.seed, self.activation_order)

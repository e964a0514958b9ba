"""The run record: what a training run leaves in its folder and how the rest of the project reads it back.

Torch-free, so ``polycom.report`` and ``scripts/collect_runs.py`` depend on this contract and not on the trainer.

- ``summary.json`` (``SUMMARY``): one ``RunSummary``; its ``metrics`` are flattened into the top level, so a
  downstream result reads ``summary["arc_easy/acc"]``.
- ``metrics.jsonl`` (``METRICS``): one JSON object per logged step, always with ``step`` and ``tokens``.
- ``config.yaml`` (``CONFIG``): the resolved training config.
- ``hf/`` (``HF_DIR``): the final model in Hugging Face format.

A run is finished when its summary is ``final`` (training complete, a validation loss, every configured downstream
task evaluated without error) and, with ``trainer.save_hf``, its export is complete; ``pending_final_steps`` names
what is left, and a resume (``trainer.resume=auto``) redoes exactly that, without training.

Metric keys: ``<task>/<metric>`` for downstream results (``arc_easy/acc``, ``blimp/acc``),
``<task>/<breakdown key>/<group>/<metric>`` for a task's per-group results (``blimp/phenomenon/anaphor_agreement/acc``,
``blimp/paradigm/adjunct_island/acc``, ``mmlu/subject/anatomy/acc``),
``polycom/layer<i>/<coefficient>`` for activation coefficients, ``moe/layer<i>/<load stat>`` for expert load and
``data/<stat>`` for the training data's passes and skipped rows (per-step diagnostics, kept out of the summary's
metrics; the summary's ``data`` holds the last), ``analysis/<name>`` for the analyses of ``scripts/analyze.py``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

SUMMARY, METRICS, CONFIG, HF_DIR = "summary.json", "metrics.jsonl", "config.yaml", "hf"
CONTINUED_IN = "continued_in.txt"  # a folder whose resume=auto continued the same job in another one
DIAGNOSTIC_PREFIXES = ("polycom/", "moe/", "data/")
DEFAULT_ORDER = 3
# the order of activations in tables and plots: the registry's (``polycom.model.activations.ACTIVATIONS``, checked
# by a test), spelled out here so that reading runs needs no torch
ACTIVATION_ORDER = ("relu", "gelu", "swiglu", "relu2", "polyrelu", "polynorm", "gated_polynorm", "pnglu")


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
    planned_steps: int | None = None  # the steps this run was (last) planned to train
    # settings changed by a resume: {"step", "key", "old", "new", "override"}; override = it changes what is
    # trained and trainer.resume_allow_changes allowed it (polycom.config_diff)
    config_changes: list[dict] = field(default_factory=list)
    # the training data: passes read ("epochs", None while under one pass), tokens of one pass, rows skipped
    # (summed over processes and passes); see polycom.train.hooks.DataStats
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # result metrics (``is_result_metric``)

    def to_dict(self) -> dict:
        values = asdict(self)
        metrics = values.pop("metrics")
        if values["downstream_error"] is None:
            values.pop("downstream_error")
        return {**values, **metrics}

    def name(self) -> str:
        return run_name(self.activation, self.seed, self.activation_order)


def read_summary(run_dir: Path) -> dict | None:
    """The run's ``summary.json``, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def export_complete(run_dir: Path) -> bool:
    """``hf/`` holds a config and the weights (one file or a sharded index): not an export a full disk cut short."""
    hf = Path(run_dir) / HF_DIR
    return (hf / "config.json").is_file() and any((hf / name).is_file() for name in
                                                  ("model.safetensors", "model.safetensors.index.json"))


def result_problem(summary: dict | None, steps: int | None = None) -> str | None:
    """Why a run has no result to report (None when it has one): no summary, training incomplete, no validation
    loss."""
    if summary is None:
        return "no summary.json"
    if not summary.get("complete", True) or (steps is not None and summary.get("steps") != steps):
        planned = steps if steps is not None else summary.get("planned_steps")
        return f"training stopped at step {summary.get('steps')}" + (f" of {planned}" if planned else "")
    if summary.get("val_loss") is None:
        return "no validation loss (the final validation never ran to the end)"
    return None


def summary_problem(summary: dict | None, steps: int | None = None, downstream: Iterable[str] = ()) -> str | None:
    """Why a summary is not a finished run's (None when it is): ``result_problem``, or a downstream task that
    failed or was never evaluated."""
    problem = result_problem(summary, steps)
    if problem is not None:
        return problem
    if summary.get("downstream_error"):
        return f"downstream evaluation failed ({summary['downstream_error']})"
    missing = [task for task in downstream if not any(key.startswith(task + "/") for key in summary)]
    if missing:
        return f"no result for downstream task(s) {', '.join(missing)}"
    return None


def pending_final_steps(run_dir: Path, steps: int, save_hf: bool, downstream: Iterable[str] = ()) -> list[str]:
    """What a run trained to ``steps`` still lacks: ``final evaluation`` (then ``summary``) and ``export``."""
    pending = []
    if summary_problem(read_summary(run_dir), steps, downstream) is not None:
        pending += ["final evaluation", "summary"]
    if save_hf and not export_complete(run_dir):
        pending.append("export")
    return pending

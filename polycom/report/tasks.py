"""What the report needs to know about each downstream task, without importing the evaluation code (torch): its
headline metric (one per task, in every table and plot), the split that is scored, and the accuracy of guessing.

Spelled out here as ``ACTIVATION_ORDER`` is in ``polycom.runs``; tests/test_report.py checks the headlines and
splits against the task registry (``polycom.eval.tasks.TASKS``) and the chance levels against the local data.
"""

from __future__ import annotations

from dataclasses import dataclass

from polycom.runs import breakdown_parts


@dataclass(frozen=True)
class TaskInfo:
    headline: str  # the registry's headline metric (OLMo's choice of acc / acc_norm)
    split: str  # the split scored (lm-eval's own task may score another: ``LM_EVAL_SPLIT``)
    chance: float | None  # expected accuracy of a uniform guess (mean of 1 / choices); None: no such level


TASKS = {
    "arc_easy": TaskInfo("acc", "validation", 0.25),
    "arc_challenge": TaskInfo("acc_norm", "validation", 0.25),
    "piqa": TaskInfo("acc_norm", "validation", 0.5),
    "sciq": TaskInfo("acc", "validation", 0.25),
    "winogrande": TaskInfo("acc", "validation", 0.5),
    "hellaswag": TaskInfo("acc_norm", "validation", 0.25),
    "boolq": TaskInfo("acc", "validation", 0.5),
    "openbookqa": TaskInfo("acc_norm", "validation", 0.25),
    "copa": TaskInfo("acc", "validation", 0.5),
    "commonsense_qa": TaskInfo("acc_norm", "validation", 0.2),
    "social_iqa": TaskInfo("acc_norm", "validation", 1 / 3),
    "mmlu": TaskInfo("acc", "test", 0.25),
    "lambada": TaskInfo("acc", "test", None),
    "blimp": TaskInfo("acc", "train", 0.5),
}
# where lm-eval 0.4's task of the same name scores another split (this project's local data has only the above)
LM_EVAL_SPLIT = {"arc_easy": "test", "arc_challenge": "test", "sciq": "test", "openbookqa": "test"}
# per-task counts in a run's summary (``polycom.eval.downstream.flatten_metrics``): examples scored, left out
# because an answer does not fit the window, malformed rows skipped, BLiMP pairs scored alike (counted half right)
COUNTS = ("n", "too_long", "skipped", "ties")
# accuracy metrics a task reports besides its headline (shown in results.csv, not in tables or plots)
ALTERNATIVES = ("acc", "acc_norm")
# the per-run mean of the headline accuracies of a study's tasks (the paper's "average of six tasks")
TASK_MEAN = "tasks_mean/acc"


def is_count(metric: str) -> bool:
    task, _, name = metric.partition("/")
    return task in TASKS and name in COUNTS


def is_alternative(metric: str) -> bool:
    """``<task>/acc`` where the task's headline is ``acc_norm`` (and the reverse), per-group ones included."""
    task, name = metric.split("/")[0], metric.rsplit("/", 1)[-1]
    return task in TASKS and name in ALTERNATIVES and name != TASKS[task].headline


def is_headline(metric: str) -> bool:
    """``<task>/<its headline metric>``, the metric a task is reported by."""
    task, _, name = metric.partition("/")
    return task in TASKS and name == TASKS[task].headline


def chance(metric: str) -> float | None:
    """Guessing's accuracy for a task's headline metric or one of its groups (BLiMP's phenomena: 0.5)."""
    parts = breakdown_parts(metric)
    task, name = (parts[0], parts[3]) if parts else tuple(metric.split("/", 1)) if "/" in metric else (metric, "")
    if task not in TASKS or name not in ALTERNATIVES:
        return None
    return TASKS[task].chance

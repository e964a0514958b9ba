"""Downstream evaluation (tasks, scorer, metrics), the lm-evaluation-harness bridge, and weight/representation
analyses. ``evaluate_tasks`` + ``flatten_metrics`` are what the trainer calls in-loop."""

from polycom.eval.downstream import evaluate_tasks, flatten_metrics, load_examples, results_markdown
from polycom.eval.scorer import score_requests
from polycom.eval.tasks import TASKS, Example, Request, get_task

__all__ = ["TASKS", "Example", "Request", "evaluate_tasks", "flatten_metrics", "get_task", "load_examples",
           "results_markdown", "score_requests"]

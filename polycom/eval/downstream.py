"""Run downstream tasks on a model: load rows, build requests, score them, compute metrics.

This is what the trainer calls in-loop (``evaluate_tasks`` + ``flatten_metrics``) and what
``scripts/evaluate.py`` runs on a saved model. Examples are the first ``limit`` rows of each table in
the dataset's own order (per subject for MMLU and per paradigm for BLiMP), so every run and every
checkpoint is scored on the same items.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from polycom.eval.metrics import task_results
from polycom.eval.scorer import encode_requests, model_window, score_requests
from polycom.eval.sources import load_rows
from polycom.eval.tasks import Example, RowError, Task, get_task

log = logging.getLogger(__name__)


def evaluate_tasks(model, tokenizer, tasks: Sequence[str], limit: int | None = None,
                   data_dir: str | Path | None = None, batch_size: int = 16, accelerator=None,
                   skip_bad_rows: bool = False, max_length: int | None = None, too_long: str = "skip") -> dict:
    """Per task ``{"metrics", "headline", "n", "skipped", "too_long", "examples", ["groups"]}``.

    An example with a choice whose continuation alone is longer than the model's window (``max_length`` or
    the model's) cannot be scored (lm-eval refuses it as well): ``too_long="skip"`` leaves the whole example
    out and counts it in ``too_long`` with a warning, ``"error"`` raises naming the task and the example.
    Contexts that do not fit lose tokens on the left, as in lm-eval.

    ``data_dir``: a local folder laid out like the shared ``downstream/`` data, used exclusively; None
    reads the Hugging Face Hub. Malformed rows raise ValueError naming task, row and field, unless
    ``skip_bad_rows`` (then they are counted in ``skipped``). Under Accelerate every rank gets the
    full results."""
    if too_long not in TOO_LONG:
        raise ValueError(f"too_long={too_long!r} is not one of {', '.join(TOO_LONG)}")
    chosen = [get_task(name) for name in tasks]  # unknown names fail before any work is done
    window = max_length or model_window(model, tokenizer)
    results = {}
    for task in chosen:
        started = time.perf_counter()
        examples, skipped = load_examples(task, data_dir, limit, skip_bad_rows)
        examples, encoded, dropped = _fitting_examples(task, examples, tokenizer, window, too_long)
        requests = [request for example in examples for request in example.requests]
        scores = score_requests(model, tokenizer, requests, batch_size=batch_size, max_length=window,
                                accelerator=accelerator, encoded=encoded)
        results[task.name] = {**task_results(task, examples, scores), "skipped": skipped, "too_long": dropped}
        if accelerator is None or accelerator.is_main_process:
            log.info("%s: %s = %.4f on %d examples (%d requests, %.1f s)", task.name, task.headline,
                     results[task.name]["metrics"].get(task.headline, float("nan")), len(examples), len(requests),
                     time.perf_counter() - started)
    return results


TOO_LONG = ("skip", "error")
# per-task counts written next to the metrics by ``flatten_metrics`` (polycom.report.tasks.COUNTS reads them back)
COUNTS = ("n", "too_long", "skipped", "ties")


def _fitting_examples(task: Task, examples: list[Example], tokenizer, window: int, too_long: str):
    """(the examples whose every continuation fits the window, their requests encoded, how many were left out)."""
    cache: dict = {}
    kept, encoded, dropped = [], [], 0
    for index, example in enumerate(examples):
        pairs = encode_requests(tokenizer, example.requests, cache)
        longest = max(len(tokens) for _, tokens in pairs)
        if longest <= window:
            kept.append(example)
            encoded += pairs
            continue
        if too_long == "error":
            raise ValueError(f"{task.name}: example {index} has a continuation of {longest} tokens, which does not "
                             f"fit the model's window of {window} (lm-eval refuses these too); use a "
                             "longer-context model or skip such examples (too_long=skip)")
        dropped += 1
    if dropped:
        log.warning("%s: left out %d of %d examples with a continuation longer than the model's window of %d tokens",
                    task.name, dropped, len(examples), window)
    return kept, encoded, dropped


def load_examples(task: Task, data_dir: str | Path | None, limit: int | None,
                  skip_bad_rows: bool = False) -> tuple[list[Example], int]:
    """The task's examples (first ``limit`` rows of each of its tables) and the number of rows skipped."""
    examples, skipped = [], 0
    for source in task.sources:
        for index, row in enumerate(load_rows(task.name, source, data_dir, limit)):
            try:
                examples.append(task.build(row))
            except RowError as err:
                if not skip_bad_rows:
                    where = f"{source.subset} " if source.subset else ""
                    raise ValueError(f"{task.name}: {where}row {index}, field {err.field!r}: {err.problem}") from err
                skipped += 1
    if skipped:
        log.warning("%s: skipped %d malformed rows", task.name, skipped)
    return examples, skipped


def flatten_metrics(results: dict) -> dict[str, float]:
    """``{"<task>/<metric>": value}`` for loggers and summary.json, and the per-group results as
    ``"<task>/<breakdown key>/<group>/<metric>"`` (MMLU subjects, BLiMP paradigms and phenomena), and the
    counts behind them (``COUNTS``): examples scored (``<task>/n``), left out because an answer does not fit the
    window (``/too_long``), malformed rows skipped (``/skipped``), BLiMP pairs scored alike (``/ties``)."""
    flat = {}
    for task, result in results.items():
        for metric, value in result["metrics"].items():
            flat[f"{task}/{metric}"] = value
        flat.update({f"{task}/{count}": result[count] for count in COUNTS if count in result})
        for key, members in result.get("groups", {}).items():
            for name, metrics in members.items():
                for metric, value in metrics.items():
                    flat[f"{task}/{key}/{name}/{metric}"] = value
    return flat


def results_markdown(results: dict) -> str:
    """A table of every task's metrics, the headline metric in bold."""
    lines = ["| task | n | acc | acc_norm | perplexity | headline |", "|---|---:|---:|---:|---:|---|"]
    for task, result in results.items():
        cells = []
        for metric in ("acc", "acc_norm", "perplexity"):
            value = result["metrics"].get(metric)
            text = "" if value is None else f"{value:.4f}"
            cells.append(f"**{text}**" if metric == result["headline"] and text else text)
        lines.append(f"| {task} | {result['n']} | {' | '.join(cells)} | {result['headline']} |")
    return "\n".join(lines) + "\n"

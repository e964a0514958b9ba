"""Run our downstream tasks through lm-evaluation-harness, on local data or the Hub.

``task_configs`` turns each task into lm-eval task configs given as Python dicts (the keys of a task
YAML): the data is our local folder (``dataset_path: arrow`` / ``json`` with ``data_files``) or the same
Hub dataset we read, and the prompt fields are callables built on ``polycom.eval.tasks``, so lm-eval
scores exactly the requests ``evaluate_tasks`` scores. MMLU and BLiMP become one config per subject /
paradigm (``mmlu_<subject>``, ``blimp_<paradigm>``), as in lm-eval, so ``limit`` applies per subject there
too. ``TaskManager(include_defaults=False)`` skips indexing lm-eval's thousands of built-in tasks.

``write_task_folder`` writes the same tasks for lm-eval's *command line* (``lm_eval --include_path``), which
cannot call Python code of ours: each table's prompts are rendered once into a JSON-lines file (``query``,
``choices``, ``target``) and a task YAML reads those fields by name, so the stock ``lm_eval`` executable
scores the same requests with nothing of polycom installed.

lm-eval's own task definitions differ from ours in the three places listed in ``polycom.eval.tasks``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from polycom.eval.sources import Source, load_rows, local_path
from polycom.eval.tasks import Task, get_task

# lm-eval "multiple input" tasks: each choice has its own context and all share one continuation.
_MULTIPLE_INPUT = frozenset({"winogrande"})
_ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
_METRICS = {
    "choice": [_ACC, {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    "pair": [_ACC],
    "greedy": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}, _ACC],
}


def task_configs(tasks: Sequence[str], data_dir: str | Path | None = None) -> list[dict]:
    """lm-eval task dicts for ``tasks`` (our names), reading ``data_dir`` (local only) or the Hub."""
    return [_config(task, source, data_dir) for task in map(get_task, tasks) for source in task.sources]


def config_name(task: Task, source: Source) -> str:
    """The lm-eval task name of one table: ``arc_easy``, ``mmlu_anatomy``, ``blimp_adjunct_island``."""
    return f"{task.name}_{source.subset}" if source.subset else task.name


def run_lm_eval(model, tokenizer=None, tasks: Sequence[str] = ("arc_easy",), data_dir: str | Path | None = None,
                limit: int | None = None, batch_size: int = 16, device: str = "cpu",
                log_samples: bool = False) -> dict:
    """``lm_eval.simple_evaluate`` on an in-memory model (with its tokenizer) or a saved Hugging Face
    folder (``model`` = its path; the tokenizer is read from it). Returns lm-eval's output dict."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import polycom.model  # noqa: F401  registers model_type "polycom" for a folder given by path

    if isinstance(model, (str, Path)):
        lm = HFLM(pretrained=str(model), backend="causal", batch_size=batch_size, device=device)
    else:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
    return lm_eval.simple_evaluate(model=lm, tasks=task_configs(tasks, data_dir), limit=limit,
                                   log_samples=log_samples, bootstrap_iters=0,
                                   task_manager=TaskManager(include_defaults=False))


def summarize(output: dict, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """Our per-task metrics from lm-eval's ``output["results"]``: tables of one task (MMLU subjects, BLiMP
    paradigms) are averaged with equal weight, as ``evaluate_tasks`` does."""
    summary = {}
    for task in map(get_task, tasks):
        tables = [output["results"][config_name(task, s)] for s in task.sources]
        names = [m["metric"] for m in _METRICS[task.scoring]]
        summary[task.name] = {name: sum(t[f"{name},none"] for t in tables) / len(tables) for name in names}
    return summary


def write_task_folder(tasks: Sequence[str], data_dir: str | Path | None, out_dir: str | Path,
                      prefix: str = "polycom_", limit: int | None = None) -> list[str]:
    """Task YAMLs (+ rendered JSON-lines data) for ``lm_eval --include_path out_dir``; returns the task names.

    Tables are named ``<prefix><table>`` (``polycom_arc_easy``, ``polycom_blimp_adjunct_island``) so they never
    shadow lm-eval's built-in tasks; a task of several tables also gets a group ``<prefix><task>`` averaging
    them with equal weight, as ``evaluate_tasks`` does. ``limit`` renders only the first rows of each table.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for task in map(get_task, tasks):
        tables = []
        for source in task.sources:
            config = _config(task, source, data_dir)
            name = prefix + config["task"]
            data_file = out / f"{name}.jsonl"
            with open(data_file, "w", encoding="utf-8") as f:
                for row in load_rows(task.name, source, data_dir, limit):
                    rendered = {"query": config["doc_to_text"](row), "target": config["doc_to_target"](row)}
                    if "doc_to_choice" in config:
                        rendered["choices"] = config["doc_to_choice"](row)
                    f.write(json.dumps(rendered) + "\n")
            yaml = {key: value for key, value in config.items() if not key.startswith(("doc_to_", "dataset_"))}
            yaml.update(task=name, dataset_path="json", dataset_kwargs={"data_files": {"test": str(data_file)}},
                        test_split="test", doc_to_text="query", doc_to_target="target")
            if "doc_to_choice" in config:
                yaml["doc_to_choice"] = "choices"
            (out / f"{name}.yaml").write_text(json.dumps(yaml, indent=1) + "\n")  # JSON is valid YAML
            tables.append(name)
        if len(tables) == 1:
            names.append(tables[0])
            continue
        group = {"group": prefix + task.name, "task": tables,
                 "aggregate_metric_list": [{"metric": m["metric"], "aggregation": "mean", "weight_by_size": False}
                                           for m in _METRICS[task.scoring] if m["aggregation"] == "mean"]}
        (out / f"{prefix}{task.name}.yaml").write_text(json.dumps(group, indent=1) + "\n")
        names.append(prefix + task.name)
    return names


def _config(task: Task, source: Source, data_dir: str | Path | None) -> dict:
    config = {"task": config_name(task, source), "test_split": source.hub[2], "metric_list": _METRICS[task.scoring],
              **_dataset_fields(task, source, data_dir)}
    if task.scoring == "greedy":
        config.update(output_type="loglikelihood", doc_to_text=lambda doc: task.build(doc).requests[0].context,
                      doc_to_target=lambda doc: task.build(doc).requests[0].continuation)
    elif task.name in _MULTIPLE_INPUT:
        config.update(output_type="multiple_choice", target_delimiter=" ",
                      doc_to_text=lambda doc: task.build(doc).gold,
                      doc_to_choice=lambda doc: [r.context for r in task.build(doc).requests],
                      doc_to_target=lambda doc: task.build(doc).requests[0].continuation[1:])
    else:
        config.update(output_type="multiple_choice", target_delimiter=" ",
                      doc_to_text=lambda doc: task.build(doc).requests[0].context,
                      doc_to_choice=lambda doc: list(task.build(doc).answers),
                      doc_to_target=lambda doc: task.build(doc).gold)
    return config


def _dataset_fields(task: Task, source: Source, data_dir: str | Path | None) -> dict:
    path, name, split = source.hub
    if data_dir is None:
        return {"dataset_path": path, "dataset_name": name}
    local = local_path(task.name, source, data_dir)
    if local.is_dir():  # a save_to_disk folder: its .arrow shards, read by datasets' arrow builder
        shards = sorted(str(p) for p in local.glob("*.arrow"))
        return {"dataset_path": "arrow", "dataset_kwargs": {"data_files": {split: shards}}}
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": {split: str(local)}}}

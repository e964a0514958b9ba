"""Task metrics from per-request scores: per-example decisions, then means, then breakdowns.

- "choice": ``acc`` = argmax of the summed log-likelihood, ``acc_norm`` = argmax of it divided by the
  answer text's length in characters (ties go to the lower index, like numpy's argmax in lm-eval).
- "pair" (BLiMP): right when log P(good) > log P(bad), wrong when it is smaller, and half right on a tie
  (``ties`` counts them). lm-eval's argmax counts a tie as right, so a model that gives both sentences of every
  pair the same score (the identical-logit artifact reported for BabyLM 2025) would get 100%; counted as half
  right it scores exactly chance, 0.5, as guessing would. (Constant logits are not enough for a tie: the summed
  log-probability still depends on the sentence's length in tokens.)
- "greedy" (LAMBADA): ``acc`` = every continuation token is the argmax; ``perplexity`` =
  exp(-mean over examples of the continuation's summed log-likelihood), lm-eval's definition.

With a breakdown, each group's metrics are means over its examples, and the task's metrics are the
macro average over the groups of the first breakdown key (every MMLU subject / BLiMP paradigm counts
once, as in the BLiMP paper and MMLU's usual reporting).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from polycom.eval.tasks import Example, Task


def task_results(task: Task, examples: Sequence[Example], scores: Sequence[tuple[float, bool]]) -> dict:
    """``{"metrics", "headline", "n", "examples", "groups"}`` for one task (``groups`` only with a breakdown)."""
    per_example, offset = [], 0
    for example in examples:
        own = scores[offset:offset + len(example.requests)]
        offset += len(example.requests)
        per_example.append(_decide(task.scoring, example, own))
    if offset != len(scores):
        raise ValueError(f"{task.name}: {len(scores)} scores for {offset} requests")
    result = {"metrics": _metrics(task.scoring, per_example), "headline": task.headline, "n": len(examples),
              "examples": per_example}
    if task.scoring == "pair":
        result["ties"] = sum(record["tie"] for record in per_example)
    if task.breakdown:
        result["groups"] = {key: _group_metrics(task.scoring, examples, per_example, key) for key in task.breakdown}
        units = result["groups"][task.breakdown[0]].values()
        result["metrics"] = {name: _mean([unit[name] for unit in units]) for name in result["metrics"]}
    return result


def _decide(scoring: str, example: Example, scores: Sequence[tuple[float, bool]]) -> dict:
    log_likelihoods = [ll for ll, _ in scores]
    record = dict(example.meta)
    if scoring == "greedy":
        return {**record, "greedy": scores[0][1], "logprob": log_likelihoods[0]}
    if scoring == "pair":
        good, bad = log_likelihoods
        # pred as lm-eval's argmax (a tie picks the first, the good sentence); ``tie`` makes it half right
        return {**record, "pred": 0 if good >= bad else 1, "gold": example.gold, "tie": good == bad}
    normalized = [ll / max(1, len(answer)) for ll, answer in zip(log_likelihoods, example.answers)]
    return {**record, "pred": _argmax(log_likelihoods), "pred_norm": _argmax(normalized), "gold": example.gold}


def _metrics(scoring: str, records: Sequence[dict]) -> dict:
    if not records:
        return {}
    if scoring == "greedy":
        return {"acc": _mean([r["greedy"] for r in records]),
                "perplexity": math.exp(-_mean([r["logprob"] for r in records]))}
    if scoring == "pair":
        return {"acc": _mean([0.5 if r["tie"] else r["pred"] == r["gold"] for r in records])}
    metrics = {"acc": _mean([r["pred"] == r["gold"] for r in records])}
    if scoring == "choice":
        metrics["acc_norm"] = _mean([r["pred_norm"] == r["gold"] for r in records])
    return metrics


def _group_metrics(scoring: str, examples: Sequence[Example], records: Sequence[dict], key: str) -> dict:
    groups: dict[str, list] = defaultdict(list)
    for example, record in zip(examples, records):
        groups[example.meta[key]].append(record)
    return {name: _metrics(scoring, members) for name, members in groups.items()}


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")

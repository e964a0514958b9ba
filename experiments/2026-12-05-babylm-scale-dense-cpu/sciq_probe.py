"""Why SciQ scores below chance: scores the study's final models on SciQ with and without its context.

For each exported model, the accuracy of picking the answer with the highest summed log-probability
(lm-eval's ``acc``) when the answer follows (a) lm-eval's prompt, support passage + question, (b) the question
alone, (c) nothing (the model's prior for the answer string), and (d) (a) minus (c), i.e. how much the context
raised each answer's probability. If (c) is below chance too, the gold answers are simply less likely strings
than the distractors, whatever the question. Also prints how long the gold answers and the distractors are in
the first run's tokens and how often each occurs in the support passage.
    python experiments/2026-12-05-babylm-scale-dense-cpu/sciq_probe.py outputs/study/babylm/*-s0
"""

import argparse
import os
from pathlib import Path

import numpy as np

from polycom.eval.downstream import load_examples
from polycom.eval.scorer import score_requests
from polycom.eval.tasks import Request, get_task
from polycom.model.loading import load_exported


def accuracy(scores: np.ndarray, gold: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == gold).mean())


def answer_statistics(examples, tokenizer) -> str:
    """Mean token count of gold answers vs distractors, and how often each occurs in the support passage."""
    gold_tokens, other_tokens, gold_in_support, other_in_support = [], [], 0, 0.0
    for example in examples:
        context = example.requests[0].context
        support = context[:context.rindex("Question:")].lower()
        for index, answer in enumerate(example.answers):
            tokens = len(tokenizer(" " + answer)["input_ids"])
            if index == example.gold:
                gold_tokens.append(tokens)
                gold_in_support += answer.lower() in support
            else:
                other_tokens.append(tokens)
                other_in_support += (answer.lower() in support) / (len(example.answers) - 1)
    return (f"{len(examples)} questions: gold answers {np.mean(gold_tokens):.2f} tokens, distractors "
            f"{np.mean(other_tokens):.2f}; in the support passage: gold {gold_in_support}, "
            f"a distractor {other_in_support:.0f} (mean of the three)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding an hf/ export")
    args = parser.parse_args()
    examples, _ = load_examples(get_task("sciq"), Path(os.environ["POLYCOM_DATA_DIR"]) / "downstream", None)
    gold = np.array([e.gold for e in examples])
    conditions = {
        "support + question (lm-eval)": lambda r: r.context,
        "question only": lambda r: r.context[r.context.rindex("Question:"):],
        "no context (prior)": lambda r: "",
    }
    print("| run | " + " | ".join(conditions) + " | context gain (first - prior) |")
    print("|---" * (len(conditions) + 2) + "|")
    for run in args.runs:
        model, tokenizer = load_exported(run / "hf")
        if run == args.runs[0]:
            statistics = answer_statistics(examples, tokenizer)
        scores = {}
        for name, context_of in conditions.items():
            requests = [Request(context_of(r), r.continuation) for e in examples for r in e.requests]
            logprobs = [s for s, _ in score_requests(model, tokenizer, requests, batch_size=32)]
            scores[name] = np.array(logprobs).reshape(len(examples), -1)
        first, prior = scores[next(iter(conditions))], scores["no context (prior)"]
        cells = [f"{accuracy(s, gold):.3f}" for s in scores.values()] + [f"{accuracy(first - prior, gold):.3f}"]
        print(f"| {run.name} | " + " | ".join(cells) + " |")
    print(statistics)


if __name__ == "__main__":
    main()

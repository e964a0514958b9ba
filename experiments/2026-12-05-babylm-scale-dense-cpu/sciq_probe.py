"""Why SciQ scores below chance: scores the study's final models on SciQ with and without its context.

For each exported model, the accuracy of picking the answer with the highest summed log-probability
(lm-eval's ``acc``) when the answer follows (a) lm-eval's prompt, support passage + question, (b) the question
alone, (c) nothing (the model's prior for the answer string), and (d) (a) minus (c), i.e. how much the context
raised each answer's probability. If (c) is below chance too, the gold answers are simply less likely strings
than the distractors, whatever the question. Also prints how long the gold answers and the distractors are (in
characters and in the first run's tokens) and how often each occurs in the support passage.
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
    """Gold answers vs distractors: mean length in characters and tokens, how often the gold answer is the
    longest / shortest of the choices, and how often each occurs in the support passage."""
    chars, tokens, in_support = {True: [], False: []}, {True: [], False: []}, {True: [], False: []}
    longest = shortest = any_distractor = 0
    for example in examples:
        context = example.requests[0].context
        support = context[:context.rindex("Question:")].lower()
        gold_length = len(example.answers[example.gold])
        distractor_lengths = [len(a) for i, a in enumerate(example.answers) if i != example.gold]
        longest += gold_length > max(distractor_lengths)
        shortest += gold_length < min(distractor_lengths)
        for index, answer in enumerate(example.answers):
            gold = index == example.gold
            chars[gold].append(len(answer))
            tokens[gold].append(len(tokenizer(" " + answer)["input_ids"]))
            in_support[gold].append(answer.lower() in support)
        any_distractor += any(a.lower() in support for i, a in enumerate(example.answers) if i != example.gold)
    n, others = len(examples), len(examples[0].answers) - 1
    return (f"{n} questions: gold answers {np.mean(chars[True]):.1f} characters and {np.mean(tokens[True]):.2f} "
            f"tokens, distractors {np.mean(chars[False]):.1f} and {np.mean(tokens[False]):.2f}; gold the strictly "
            f"longest choice in {longest}, the shortest in {shortest}; in the support passage: gold "
            f"{sum(in_support[True])}, each distractor {sum(in_support[False]) / others:.0f} on average over the "
            f"{others}, some distractor {any_distractor}")


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

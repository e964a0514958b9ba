"""Throughput of the downstream scorer on CPU: requests/s and tokens/s on a 4-choice task (ARC-Easy).

    python scripts/benchmark_eval.py [--examples 100] [--batch-sizes 1,8,32] [--threads 1,2] [--repeats 5]

Scores the first ``--examples`` ARC-Easy items ($POLYCOM_DATA_DIR/downstream) with random models of two
sizes — the test suite's tiny model and the CPU study model (``model=cpu_small``: d256, 4 layers, vocab
8192) — at several batch sizes, plus lm-eval's HFLM on the same items for comparison. Tokens are the
model inputs (context + continuation, after truncation). Repeats are interleaved across configurations, so a
burst of load from other jobs hits all of them alike; the fastest and the median repeat are reported.
Writes ``<date>-eval-scorer-cpu.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from polycom.eval import load_examples, score_requests
from polycom.eval.lm_eval_bridge import run_lm_eval
from polycom.eval.scorer import encode_requests, model_window
from polycom.eval.tasks import get_task
from polycom.model import PolyComConfig, PolyComForCausalLM

MODELS = {
    "tiny (d64, 2 layers, vocab 512)": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=128, vocab_size=512),
    "cpu_small (d256, 4 layers, vocab 8192)": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                                   intermediate_size=704, vocab_size=8192),
}


def byte_level_bpe(vocab_size: int):
    """A byte-level BPE trained on Python's pydoc topics: real subword statistics, no download."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eos],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(topics.values()), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos)


def input_tokens(tokenizer, requests, window: int) -> int:
    return sum(min(len(c) + len(t) - 1, window) for c, t in encode_requests(tokenizer, requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--threads", default=str(os.cpu_count() or 1), help="torch thread counts to compare")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of every configuration")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "experiments" / "benchmarks")
    args = parser.parse_args()
    data_dir = Path(os.environ.get("POLYCOM_DATA_DIR", "../shared/data")) / "downstream"
    torch.manual_seed(0)
    load_before = os.getloadavg()

    examples, _ = load_examples(get_task("arc_easy"), data_dir, args.examples)
    requests = [r for e in examples for r in e.requests]
    configurations = []  # (row without timings, callable)
    for model_name, sizes in MODELS.items():
        tokenizer = byte_level_bpe(sizes["vocab_size"])
        model = PolyComForCausalLM(PolyComConfig.matched(**sizes, max_position_embeddings=1024, activation="polynorm",
                                                 eos_token_id=tokenizer.eos_token_id)).eval()
        tokens = input_tokens(tokenizer, requests, model_window(model))
        runs = [(f"polycom scorer, batch {b}",
                 lambda m=model, t=tokenizer, b=b: score_requests(m, t, requests, batch_size=b))
                for b in map(int, args.batch_sizes.split(","))]
        runs.append(("lm-eval HFLM, batch 32 (incl. task setup)", lambda m=model, t=tokenizer: run_lm_eval(
            m, t, ["arc_easy"], data_dir=data_dir, limit=args.examples, batch_size=32)))
        for threads in map(int, args.threads.split(",")):
            for run_name, run in runs:
                configurations.append(({"model": model_name, "run": run_name, "threads": threads,
                                        "requests": len(requests), "tokens": tokens}, run))
    timings = [[] for _ in configurations]
    for repeat in range(args.repeats + 1):  # repeat 0 is a warm-up (first-call allocations, lazy imports)
        for (row, run), times in zip(configurations, timings):
            torch.set_num_threads(row["threads"])
            started = time.perf_counter()
            run()
            if repeat:
                times.append(time.perf_counter() - started)
    rows = []
    for (row, _), times in zip(configurations, timings):
        best, median = min(times), statistics.median(times)
        rows.append({**row, "seconds_min": round(best, 3), "seconds_median": round(median, 3),
                     "requests_per_s": round(len(requests) / best, 1), "tokens_per_s": round(row["tokens"] / best),
                     "tokens_per_s_median": round(row["tokens"] / median)})
        print(rows[-1])
    load_after = os.getloadavg()

    record = {"date": datetime.date.today().isoformat(), "task": "arc_easy", "examples": len(examples),
              "repeats": args.repeats,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "loadavg_before": load_before, "loadavg_after": load_after},
              "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{record['date']}-eval-scorer-cpu"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# Downstream scorer throughput on CPU ({record['date']})", "",
             f"ARC-Easy, first {len(examples)} examples = {len(requests)} requests (4 choices, a few 5), fp32, random "
             f"PolyNorm models, `scripts/benchmark_eval.py`; {args.repeats} interleaved repeats after a warm-up: "
             "throughput of the fastest, tokens/s of the median too.",
             f"Machine: {record['machine']['platform']}, {os.cpu_count()} CPUs, torch {torch.__version__}. "
             f"Load average (1/5/15 min) before: {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
             f"after: {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} — a load above the core count "
             "means the cores were shared with other jobs and the numbers are lower bounds.", "",
             "| model | run | threads | requests/s | tokens/s | tokens/s (median) | seconds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['run']} | {r['threads']} | {r['requests_per_s']} | {r['tokens_per_s']:,} | "
              f"{r['tokens_per_s_median']:,} | {r['seconds_min']} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()

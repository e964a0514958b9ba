"""Throughput of the training data pipeline (stream + shuffle + tokenize + pack) with the default BPE.

    python scripts/benchmark_data.py --out bench_data.json [--tokens 5000000] [--seq-len 256]

Measures the embedded corpus and, when POLYCOM_DATA_DIR is set, the Gutenberg books, each with the
configs the trainer uses (``data=<name> tokenizer=bpe``). Reported per corpus: tokenizer build time
(training, or loading the cache), time to the first block, steady tokens/s of ``train_blocks``,
tokens/s when fast-forwarding (what a resume costs) and the time to build the validation blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from itertools import islice
from pathlib import Path

import datasets
from hydra import compose, initialize_config_dir

from polycom.data import build_tokenizer, train_blocks, validate_data_config, validation_blocks
from polycom.train.config import register_schema

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_config(data: str, vocab_size: int):
    register_schema()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[f"data={data}", "tokenizer=bpe", f"tokenizer.vocab_size={vocab_size}"])


def measure(data: str, vocab_size: int, seq_len: int, num_tokens: int, val_tokens: int) -> dict:
    cfg = load_config(data, vocab_size)
    validate_data_config(cfg.data)
    started = time.perf_counter()
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.data)
    tokenizer_s = time.perf_counter() - started
    num_blocks = num_tokens // seq_len

    started = time.perf_counter()
    stream = train_blocks(cfg.data, tokenizer, seq_len, seed=0)
    next(stream)
    first_block_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in islice(stream, num_blocks):
        pass
    stream_s = time.perf_counter() - started

    started = time.perf_counter()
    next(train_blocks(cfg.data, tokenizer, seq_len, seed=0, start_block=num_blocks))
    skip_s = time.perf_counter() - started

    started = time.perf_counter()
    validation_blocks(cfg.data, tokenizer, seq_len, num_blocks=val_tokens // seq_len)
    validation_s = time.perf_counter() - started
    return {
        "data": data, "vocab_size": len(tokenizer), "seq_len": seq_len, "tokenizer_s": tokenizer_s,
        "first_block_s": first_block_s, "tokens": num_blocks * seq_len, "stream_s": stream_s,
        "tokens_per_s": num_blocks * seq_len / stream_s, "skip_tokens_per_s": num_blocks * seq_len / skip_s,
        "epochs_started": stream.epoch + 1, "documents": stream.stats.documents,
        "skipped_empty": stream.stats.skipped_empty, "val_tokens": val_tokens, "validation_s": validation_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--tokens", type=int, default=5_000_000, help="tokens to stream per corpus")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--val-tokens", type=int, default=65536)
    args = parser.parse_args()

    corpora = ["embedded"] + (["gutenberg"] if os.environ.get("POLYCOM_DATA_DIR") else [])
    results = [measure(name, args.vocab_size, args.seq_len, args.tokens, args.val_tokens) for name in corpora]

    print(f"{'data':<10} {'tokenizer s':>11} {'first block s':>13} {'tokens/s':>11} {'skip tokens/s':>13} "
          f"{'validation s':>12}")
    for r in results:
        print(f"{r['data']:<10} {r['tokenizer_s']:>11.1f} {r['first_block_s']:>13.2f} {r['tokens_per_s']:>11,.0f} "
              f"{r['skip_tokens_per_s']:>13,.0f} {r['validation_s']:>12.2f}")
    environment = {"python": platform.python_version(), "datasets": datasets.__version__, "cpus": os.cpu_count(),
                   "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"), "argv": sys.argv[1:]}
    Path(args.out).write_text(json.dumps({"environment": environment, "results": results}, indent=2))


if __name__ == "__main__":
    main()

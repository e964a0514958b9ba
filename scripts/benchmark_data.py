"""The two data paths side by side in one run: streaming (stream + shuffle + tokenize + pack, on the fly) and
pretokenized shards (``data=tokens``, memory-mapped), per process, as the trainer calls them.

    python scripts/benchmark_data.py --out experiments/benchmarks/<date>-data-tokens-cpu.json
    python scripts/benchmark_data.py --out bench.json --data embedded --resume-tokens 1e6,1e7 --train-steps 0

For one corpus (``--data``; default gutenberg when POLYCOM_DATA_DIR is set, else embedded) with the default BPE:
the tokenizer build, the pretokenization (scripts/pretokenize.py's code, ``--workers`` processes) into a temporary
folder (or ``--tokens-dir``, kept), then for each path:

- ``first_batch_s``: from creating the stream to the first ``(batch, seq_len)`` micro-batch (``batched``);
- ``tokens_per_s``: steady micro-batches per second x tokens, over ``--stream-tokens`` / ``--memmap-tokens``;
- ``resume_s`` at each of ``--resume-tokens`` consumed: creating the stream at that block and taking one batch
  (what a resumed run waits before its first step); for streaming that is the fast-forward (a checkpoint without a
  data position), and ``resume_from_position_s`` the resume from the position a checkpoint saves (the epoch's rows
  before it read again, not tokenized);
- with ``--train-steps N``: training tokens/s of ``model=cpu_small`` for N steps on each path, and streaming with
  ``data.prefetch_blocks`` (the tokens/s of the last logged window: steps 2..N, without the first step's warm-up;
  the median of ``--train-repeats`` round-robin repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch

from polycom.data import batched, build_tokenizer, train_blocks
from polycom.data.token_writer import pretokenize
from polycom.train.build import compose_config


def _count(text: str) -> int:
    return int(float(text))


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def measure_path(data_cfg, tokenizer, seq_len: int, batch: int, tokens: int, resume_tokens: list[int]) -> dict:
    """First batch, steady tokens/s and resume times of one data path (``data_cfg.source`` tells which)."""
    first_batch_s, batches = _timed(lambda: _first(batched(train_blocks(data_cfg, tokenizer, seq_len, seed=0), batch)))
    stream_batches = batches[1]
    count = max(1, tokens // (batch * seq_len))
    started = time.perf_counter()
    for _ in range(count):
        next(stream_batches)
    steady_s = time.perf_counter() - started
    resume, from_position = {}, {}
    for consumed in resume_tokens:
        start_block = consumed // seq_len
        resume[str(consumed)], stream = _timed(lambda: _resumed(data_cfg, tokenizer, seq_len, batch, start_block))
        position = stream.state_dict()
        if position is not None:  # streaming: what a checkpoint saves; resume there (the stream is a batch further)
            from_position[str(consumed)], _ = _timed(
                lambda: _resumed(data_cfg, tokenizer, seq_len, batch, start_block + batch, position))
    return {"first_batch_s": first_batch_s, "tokens": count * batch * seq_len, "steady_s": steady_s,
            "tokens_per_s": count * batch * seq_len / steady_s, "resume_s": resume,
            "resume_from_position_s": from_position}


def _resumed(data_cfg, tokenizer, seq_len: int, batch: int, start_block: int, position=None):
    """A stream created at ``start_block`` (from ``position`` if given) after its first batch."""
    stream = train_blocks(data_cfg, tokenizer, seq_len, seed=0, start_block=start_block, position=position)
    next(batched(stream, batch))
    return stream


def _first(batches):
    """The first batch and the iterator (to go on from it)."""
    return next(batches), batches


def measure_training(overrides: list[str], steps: int, run_dir: Path) -> dict:
    from polycom.train.trainer import train

    cfg = compose_config(["model=cpu_small", "logger=none", f"trainer.max_steps={steps}", "trainer.log_interval=" +
                          str(max(1, steps - 1)), "eval.interval=null", "eval.val_tokens=4096",
                          "trainer.checkpoint_interval=null", "trainer.save_hf=false", "trainer.progress_bar=false",
                          "schedule.warmup_steps=1", *overrides])
    summary = train(cfg, run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    window = [r for r in records if "tokens_per_s" in r][-1]  # steps 2..N (the first window holds step 1)
    return {"steps": steps, "tokens_per_s": window["tokens_per_s"], "window_end_step": window["step"],
            "wall_s": summary["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--data", default="gutenberg" if os.environ.get("POLYCOM_DATA_DIR") else "embedded")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="sequences per micro-batch")
    parser.add_argument("--stream-tokens", type=_count, default=5_000_000, help="tokens timed on the streaming path")
    parser.add_argument("--memmap-tokens", type=_count, default=200_000_000, help="tokens timed on data=tokens")
    parser.add_argument("--resume-tokens", default="1e6,1e8", help="tokens consumed before each timed resume")
    parser.add_argument("--tokens-dir", help="pretokenized folder to reuse or write (default: a temporary one)")
    parser.add_argument("--workers", type=int, default=0, help="pretokenization processes (0: one per core)")
    parser.add_argument("--train-steps", type=int, default=0, help="also time N training steps of cpu_small per path")
    parser.add_argument("--train-repeats", type=int, default=3, help="round-robin repeats of the training runs")
    parser.add_argument("--prefetch", type=int, default=64, help="data.prefetch_blocks of the prefetching training run")
    args = parser.parse_args()
    resume_tokens = [_count(t) for t in args.resume_tokens.split(",") if t]
    load_before = os.getloadavg()[0]

    text_overrides = [f"data={args.data}", "tokenizer=bpe", f"tokenizer.vocab_size={args.vocab_size}"]
    cfg = compose_config(text_overrides)
    tokenizer_s, tokenizer = _timed(lambda: build_tokenizer(cfg.tokenizer, cfg.data))
    folder = Path(args.tokens_dir) if args.tokens_dir else Path(tempfile.mkdtemp(prefix="polycom-bench-tokens-"))
    try:
        pretokenize_s, index = _timed(lambda: pretokenize(cfg, folder, workers=args.workers))
        token_overrides = text_overrides + ["data=tokens", f"data.path={folder}"]
        tokens_cfg = compose_config(token_overrides)
        torch.set_num_threads(1)  # the data path's own work; a trainer's threads are busy with the model
        paths = {
            "streaming": measure_path(cfg.data, tokenizer, args.seq_len, args.batch, args.stream_tokens, resume_tokens),
            "tokens": measure_path(tokens_cfg.data, tokenizer, args.seq_len, args.batch, args.memmap_tokens,
                                   resume_tokens),
        }
        torch.set_num_threads(os.cpu_count() or 1)
        training = {}
        variants = {"tokens": token_overrides, "streaming": text_overrides,
                    "streaming_prefetch": text_overrides + [f"data.prefetch_blocks={args.prefetch}"]}
        if args.train_steps:  # round-robin repeats, the median of each: the machine's load drifts
            done: dict = {name: [] for name in variants}
            with tempfile.TemporaryDirectory() as runs:
                for repeat in range(args.train_repeats):
                    for name, overrides in variants.items():
                        done[name].append(measure_training(overrides, args.train_steps, Path(runs) / f"{name}-{repeat}"))
            training = {name: {"tokens_per_s": float(np.median([r["tokens_per_s"] for r in runs_of])), "runs": runs_of}
                        for name, runs_of in done.items()}
    finally:
        if not args.tokens_dir:
            shutil.rmtree(folder, ignore_errors=True)

    train_tokens = index["splits"]["train"]["num_tokens"]
    s, t = paths["streaming"], paths["tokens"]
    rows = [("tokens/s per process", s["tokens_per_s"], t["tokens_per_s"], "{:,.0f}"),
            ("time to first batch, s", s["first_batch_s"], t["first_batch_s"], "{:.3f}")]
    rows += [(f"resume at {int(k):.0e} tokens consumed, s", s["resume_s"][k], t["resume_s"][k], "{:.3f}")
             for k in s["resume_s"]]
    rows += [(f"resume at {int(k):.0e}, streaming from its saved position, s", s["resume_from_position_s"][k],
              t["resume_s"][k], "{:.3f}") for k in s["resume_from_position_s"]]
    if training:
        rows += [(f"training tokens/s, cpu_small ({name})", training[name]["tokens_per_s"],
                  training["tokens"]["tokens_per_s"], "{:,.0f}") for name in ("streaming", "streaming_prefetch")]
    print(f"data={args.data}, BPE {len(tokenizer)}, seq_len {args.seq_len}, micro-batch {args.batch}; pretokenized "
          f"{train_tokens:,} train tokens in {pretokenize_s:.1f} s ({train_tokens / pretokenize_s:,.0f} tokens/s)")
    print(f"| {'':<42} | {'streaming':>12} | {'data=tokens':>12} | {'tokens / streaming':>18} |")
    print(f"|{'-' * 44}|{'-' * 13}:|{'-' * 13}:|{'-' * 19}:|")
    for label, a, b, fmt in rows:
        ratio = b / a if label.startswith(("tokens/s", "training")) else a / b
        print(f"| {label:<42} | {fmt.format(a):>12} | {fmt.format(b):>12} | {ratio:>17,.1f}x |")
    environment = {"python": platform.python_version(), "datasets": datasets.__version__, "numpy": np.__version__,
                   "torch": torch.__version__, "cpus": os.cpu_count(), "processor": _processor(),
                   "load_average_before_after": [load_before, os.getloadavg()[0]],
                   "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"), "argv": sys.argv[1:]}
    result = {"environment": environment, "data": args.data, "vocab_size": len(tokenizer), "seq_len": args.seq_len,
              "micro_batch": args.batch, "tokenizer_s": tokenizer_s, "pretokenize_s": pretokenize_s,
              "pretokenize_tokens_per_s": train_tokens / pretokenize_s, "train_tokens": train_tokens,
              "dtype": index["dtype"], "paths": paths, "training": training}
    Path(args.out).write_text(json.dumps(result, indent=2))


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()

"""Tokenize a data config once into memory-mapped token shards for ``data=tokens`` (README: Pre-tokenized data).

    python scripts/pretokenize.py data=gutenberg tokenizer.vocab_size=4096 --out /data/tok/gutenberg-4096
    python scripts/pretokenize.py experiment=babylm_scale --out /data/tok/babylm   # an experiment's data+tokenizer
    python scripts/pretokenize.py data=fineweb_edu tokenizer=gpt2 --out /data/tok/fineweb --max-train-tokens 2e9

Takes train.py's config overrides (only ``data`` and ``tokenizer`` matter) and writes into ``--out`` the train and
validation splits as token shards (uint16 when the vocabulary fits, else uint32), their document boundaries, the
tokenizer and ``index.json``. Uses one tokenizing process per core (``--workers``); the files do not depend on it.
Killed, the same command continues after the last shard written; a folder is never written with two tokenizers or
data configs. Then train with ``python train.py <same overrides> data=tokens data.path=<--out>``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from polycom.data.token_writer import pretokenize
from polycom.train.build import compose_config


def _count(text: str) -> int:
    return int(float(text))  # 2e9 and 2_000_000_000 both work


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py config overrides, e.g. data=gutenberg")
    parser.add_argument("--out", required=True, help="the folder to write (new, or one this command left unfinished)")
    parser.add_argument("--workers", type=int, default=0, help="tokenizing processes (default: one per CPU core)")
    parser.add_argument("--shard-tokens", type=_count, default=50_000_000, help="tokens per shard (default 5e7)")
    parser.add_argument("--max-train-tokens", type=_count, default=None,
                        help="stop the train split at the first document end after this many tokens")
    parser.add_argument("--max-validation-tokens", type=_count, default=None,
                        help="the same for the validation split (the run reads its first eval.val_tokens)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = compose_config(args.overrides)
    started = time.perf_counter()
    index = pretokenize(cfg, args.out, workers=args.workers, shard_tokens=args.shard_tokens,
                        max_tokens={"train": args.max_train_tokens, "validation": args.max_validation_tokens})
    for split, record in index["splits"].items():
        print(f"{split}: {record['num_tokens']:,} tokens, {record['num_documents']:,} documents, "
              f"{len(record['shards'])} shard(s); skipped {record['skipped_empty']} empty, "
              f"{record['skipped_malformed']} malformed rows")
    tok = index["source"]["tokenizer"]
    same = f"tokenizer.vocab_size={tok['vocab_size']}" if tok["kind"] == "bpe" else f"tokenizer.name={tok['name']}"
    print(f"tokenizer {index['tokenizer']['name']} ({index['dtype']}); {time.perf_counter() - started:.1f} s. Train "
          f"with: python train.py data=tokens data.path={args.out} tokenizer.kind={tok['kind']} {same}")
    return index


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"pretokenize.py: {err}", file=sys.stderr)
        sys.exit(2)

"""Tokens in each split of a data config, with the tokenizer the trainer would build for it: how many tokens an
epoch is (to set trainer.max_tokens), and the characters per token.

    python scripts/count_tokens.py data=gutenberg tokenizer.vocab_size=4096

Takes train.py's config overrides. Tokens are counted on the trainer's own tokenized stream (each document's
tokens and its end-of-text token; empty documents skipped), before packing into blocks.
"""

from __future__ import annotations

import sys

from polycom.data import build_tokenizer
from polycom.data.packing import tokenize_stream
from polycom.data.sources import text_stream
from polycom.train.build import compose_config


def count(overrides: list[str]) -> dict[str, tuple[int, int]]:
    """{split: (tokens, characters)}."""
    cfg = compose_config(overrides)
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.data)
    counts = {}
    for split in ("train", "validation"):
        tokens = sum(len(row["input_ids"] or []) for row in tokenize_stream(text_stream(cfg.data, split), tokenizer,
                                                                            cfg.data))
        chars = sum(len(row["text"]) for row in text_stream(cfg.data, split))
        counts[split] = (tokens, chars)
    return counts


def main(argv=None) -> None:
    overrides = sys.argv[1:] if argv is None else argv
    for split, (tokens, chars) in count(overrides).items():
        print(f"{split}: {tokens:,} tokens, {chars:,} characters, {chars / max(tokens, 1):.2f} characters per token")


if __name__ == "__main__":
    main()

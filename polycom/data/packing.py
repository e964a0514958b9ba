"""Token blocks for training and validation: tokenize documents on the fly, end each with EOS, and cut the
concatenation into fixed-length blocks (no padding; a long document continues into the next block)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator, List, Optional

import datasets
import numpy as np
import torch

from polycom.data.sources import require_text, text_stream, train_stream


@dataclass
class PipelineStats:
    """Counts of one stream since its start (fast-forwarded blocks included), for logging: documents
    packed, empty or whitespace-only documents skipped, malformed rows skipped (``data.bad_rows=skip``:
    invalid UTF-8 or JSON, a missing or non-string text field), tokens packed (EOS included)."""

    documents: int = 0
    skipped_empty: int = 0
    tokens: int = 0
    skipped_malformed: int = 0


def tokenize_stream(ds: datasets.IterableDataset, tokenizer, data_cfg) -> datasets.IterableDataset:
    """Replace ``text`` by ``input_ids`` (the document's tokens then EOS). Empty or whitespace-only
    documents get no tokens at all (``[]``) and, with ``data.bad_rows=skip``, malformed rows (text not a
    str) get ``None``, so the consumer can skip and count them; with ``error`` those raise ``TypeError``."""
    eos = tokenizer.eos_token_id

    def encode(batch: dict) -> dict:
        texts = [require_text(text, data_cfg.text_field, data_cfg.bad_rows) for text in batch["text"]]
        kept = [i for i, text in enumerate(texts) if text is not None and text.strip()]
        encoded = tokenizer([texts[i] for i in kept], add_special_tokens=False, return_attention_mask=False,
                            verbose=False)["input_ids"] if kept else []
        input_ids: List[Optional[List[int]]] = [None if text is None else [] for text in texts]
        for i, ids in zip(kept, encoded):
            input_ids[i] = ids + [eos]
        return {"input_ids": input_ids}

    return ds.map(encode, batched=True, batch_size=data_cfg.tokenize_batch_size, remove_columns=["text"])


def pack(token_lists: Iterable[List[int]], seq_len: int) -> Iterator[np.ndarray]:
    """Cut the concatenation of ``token_lists`` into consecutive ``(seq_len,)`` arrays; the last
    incomplete block is never emitted."""
    carry = np.empty(0, dtype=np.int64)
    for ids in token_lists:
        tokens = np.concatenate((carry, np.asarray(ids, dtype=np.int64)))
        full = len(tokens) // seq_len * seq_len
        yield from tokens[:full].reshape(-1, seq_len)
        carry = tokens[full:]


class BlockStream:
    """The infinite training stream of one rank: ``(seq_len,)`` LongTensors, deterministic for given
    arguments. Each pass over the data is an epoch with its own shuffle order (``set_epoch``).

    ``start_block=n`` resumes exactly: the stream yields what the (n+1)-th, (n+2)-th, ... blocks of a fresh
    stream would be. It fast-forwards through the first n blocks (tokenizing, but without building
    tensors), which is cheap next to training. ``blocks_emitted`` counts blocks from the stream's start,
    including the skipped ones, so it is the position to record in a checkpoint.
    """

    def __init__(self, data_cfg, tokenizer, seq_len: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_block: int = 0):
        if start_block < 0:
            raise ValueError(f"start_block={start_block} must be >= 0")
        self.stats = PipelineStats()
        self.epoch = 0  # the epoch documents are currently read from
        self.blocks_emitted = start_block
        self._rank, self._world_size = rank, world_size
        self._dataset = tokenize_stream(train_stream(data_cfg, seed, rank, world_size), tokenizer, data_cfg)
        self._blocks = pack(self._documents(), seq_len)
        self._to_skip = start_block

    def __iter__(self) -> "BlockStream":
        return self

    def __next__(self) -> torch.Tensor:
        for _ in range(self._to_skip):
            next(self._blocks)
        self._to_skip = 0
        block = next(self._blocks)
        self.blocks_emitted += 1
        return torch.from_numpy(block.copy())

    def _documents(self) -> Iterator[List[int]]:
        while True:
            self._dataset.set_epoch(self.epoch)
            count = self.stats.documents
            yield from _nonempty_documents(self._dataset, self.stats)
            if self.stats.documents == count:
                raise ValueError(f"rank {self._rank} of {self._world_size} received no non-empty training "
                                 "document (data.train_files / data.name / data.text_field); so far "
                                 f"{self.stats.skipped_empty} empty documents and {self.stats.skipped_malformed} "
                                 "malformed rows were skipped")
            self.epoch += 1


def train_blocks(data_cfg, tokenizer, seq_len: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_block: int = 0) -> BlockStream:
    """The training stream: shard by rank, shuffle by ``seed``, tokenize, pack; infinite and resumable."""
    return BlockStream(data_cfg, tokenizer, seq_len, seed, rank, world_size, start_block)


def validation_blocks(data_cfg, tokenizer, seq_len: int, num_blocks: int) -> torch.Tensor:
    """The first ``num_blocks`` blocks of the validation documents, in source order: the same tokens for
    every run and world size. Shape ``(num_blocks, seq_len)``."""
    if num_blocks < 1:
        raise ValueError(f"eval.val_tokens: {num_blocks} validation blocks asked for; at least one is needed")
    tokenized = tokenize_stream(text_stream(data_cfg, "validation"), tokenizer, data_cfg)
    documents = _nonempty_documents(tokenized, PipelineStats())
    blocks = list(islice(pack(documents, seq_len), num_blocks))
    if len(blocks) < num_blocks:
        raise ValueError(f"eval.val_tokens: the validation data holds only {len(blocks)} blocks of {seq_len} "
                         f"tokens ({len(blocks) * seq_len} tokens), but {num_blocks} blocks "
                         f"({num_blocks * seq_len} tokens) were asked for; lower eval.val_tokens")
    return torch.from_numpy(np.stack(blocks))


def batched(block_iter: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Stack consecutive blocks into ``(batch_size, seq_len)`` batches; a last incomplete batch is dropped."""
    iterator = iter(block_iter)
    while True:
        blocks = list(islice(iterator, batch_size))
        if len(blocks) < batch_size:
            return
        yield torch.stack(blocks)


def _nonempty_documents(tokenized: datasets.IterableDataset, stats: PipelineStats) -> Iterator[List[int]]:
    """The token lists of ``tokenized``, skipping (and counting) the malformed and the empty ones."""
    for row in tokenized:
        ids = row["input_ids"]
        if ids is None:
            stats.skipped_malformed += 1
            continue
        if not ids:
            stats.skipped_empty += 1
            continue
        stats.documents += 1
        stats.tokens += len(ids)
        yield ids

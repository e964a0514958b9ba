"""Token blocks for training and validation: tokenize documents on the fly, end each with EOS, and cut the
concatenation into fixed-length blocks (no padding; a long document continues into the next block)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Iterable, Iterator, List, Optional

import datasets
import numpy as np
import torch

from polycom.data.sources import require_text, text_stream, train_stream

log = logging.getLogger(__name__)


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

    def encode(batch: dict) -> dict:
        return {"input_ids": encode_documents(batch["text"], tokenizer, data_cfg.text_field, data_cfg.bad_rows)}

    return ds.map(encode, batched=True, batch_size=data_cfg.tokenize_batch_size, remove_columns=["text"])


def encode_documents(values: List, tokenizer, text_field: str, bad_rows: str) -> List[Optional[List[int]]]:
    """Each document's tokens then EOS; ``[]`` for an empty or whitespace-only one, ``None`` for a malformed row
    (``bad_rows="skip"``). How every path (streaming, ``scripts/pretokenize.py``) tokenizes a document."""
    texts = [require_text(text, text_field, bad_rows) for text in values]
    kept = [i for i, text in enumerate(texts) if text is not None and text.strip()]
    encoded = tokenizer([texts[i] for i in kept], add_special_tokens=False, return_attention_mask=False,
                        verbose=False)["input_ids"] if kept else []
    input_ids: List[Optional[List[int]]] = [None if text is None else [] for text in texts]
    eos = tokenizer.eos_token_id
    for i, ids in zip(kept, encoded):
        input_ids[i] = ids + [eos]
    return input_ids


def pack(token_lists: Iterable[List[int]], seq_len: int) -> Iterator[np.ndarray]:
    """Cut the concatenation of ``token_lists`` into consecutive ``(seq_len,)`` arrays; the last
    incomplete block is never emitted."""
    return (block for block, _ in pack_with_offsets(token_lists, seq_len))


def pack_with_offsets(token_lists: Iterable[List[int]], seq_len: int) -> Iterator[tuple]:
    """:func:`pack`'s blocks, each with where it ends: the number of tokens of the current list (the one the block
    ends in) that this block and the ones before it took. A block never ends in the carry (it is shorter than a
    block), so this is always >= 1."""
    carry = np.empty(0, dtype=np.int64)
    for ids in token_lists:
        tokens = np.concatenate((carry, np.asarray(ids, dtype=np.int64)))
        full = len(tokens) // seq_len * seq_len
        for j, block in enumerate(tokens[:full].reshape(-1, seq_len)):
            yield block, (j + 1) * seq_len - len(carry)
        carry = tokens[full:]


@dataclass(frozen=True)
class StreamPosition:
    """Where a streaming rank stands after a block: the block ends after the first ``offset`` tokens of row ``row``
    (counted from 0 in this epoch's shuffled row order, empty and malformed rows included) of epoch ``epoch``. With
    the counters as of that row, it is all a resume needs: the rows before it are read again (the shuffle buffer
    is not saved), but not tokenized, and nothing else is."""

    blocks_emitted: int
    epoch: int
    row: int
    offset: int
    epoch_documents: int  # non-empty documents of this epoch up to and including the row
    first_epoch_tokens: Optional[int]
    stats: dict

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "StreamPosition":
        return cls(**values)


class BlockStream:
    """The infinite training stream of one rank: ``(seq_len,)`` LongTensors, deterministic for given
    arguments. Each pass over the data is an epoch with its own shuffle order (``set_epoch``).

    Resuming yields what the (n+1)-th, (n+2)-th, ... blocks of a fresh stream would be, in one of two ways:

    - ``position`` (a :class:`StreamPosition` from ``state_dict()``, saved with each checkpoint): the epoch's rows
      before the position are read and shuffled again but not tokenized, the row the block ended in is tokenized and
      cut at the offset. The cost is reading the raw text of the current epoch up to there.
    - ``start_block=n`` alone (a checkpoint without a position, another world size): a fast-forward through the
      first n blocks, tokenizing everything, logged with its estimated time.

    ``blocks_emitted`` counts blocks from the stream's start, including the skipped ones.
    """

    def __init__(self, data_cfg, tokenizer, seq_len: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_block: int = 0, position: Optional[StreamPosition] = None):
        if start_block < 0:
            raise ValueError(f"start_block={start_block} must be >= 0")
        if position is not None and position.blocks_emitted != start_block:
            raise ValueError(f"the saved data position is after block {position.blocks_emitted:,}, but the run "
                             f"resumes at block {start_block:,}")
        self.stats = PipelineStats(**position.stats) if position else PipelineStats()
        self.epoch = position.epoch if position else 0  # the epoch of the row the last block ended in
        self.first_epoch_tokens: Optional[int] = position.first_epoch_tokens if position else None
        self.blocks_emitted = start_block
        self._rank, self._world_size, self._seq_len = rank, world_size, seq_len
        self._tokenizer, self._data_cfg = tokenizer, data_cfg
        self._text = train_stream(data_cfg, seed, rank, world_size)
        self._row, self._epoch_documents = (position.row, position.epoch_documents) if position else (0, 0)
        self._start = position
        self._offset_base = 0  # tokens cut from the front of the current row (a resume's first row)
        self._blocks = pack_with_offsets(self._documents(), seq_len)
        self._offset = 0
        self._to_skip = 0 if position else start_block

    def __iter__(self) -> "BlockStream":
        return self

    def __next__(self) -> torch.Tensor:
        if self._to_skip:
            _log_fast_forward(self._to_skip, self._seq_len, self._rank)
        for _ in range(self._to_skip):
            next(self._blocks)
        self._to_skip = 0
        block, offset = next(self._blocks)
        self._offset = self._offset_base + offset
        self.blocks_emitted += 1
        return torch.from_numpy(block.copy())

    def state_dict(self) -> Optional[dict]:
        """The position after the last block emitted (None before the first block of a fast-forwarded stream)."""
        if self._to_skip:
            return None
        if self._start is not None and self.blocks_emitted == self._start.blocks_emitted:
            return self._start.to_dict()
        if self.blocks_emitted == 0:
            return None
        return StreamPosition(self.blocks_emitted, self.epoch, self._row, self._offset, self._epoch_documents,
                              self.first_epoch_tokens, asdict(self.stats)).to_dict()

    def _documents(self) -> Iterator[List[int]]:
        """The token lists of the non-empty documents, epoch after epoch; ``_row`` and the counters follow the
        row being yielded."""
        start = self._start
        while True:
            self._text.set_epoch(self.epoch)
            rows = iter(self._text)
            first_row = 0
            if start is not None:  # resume: read the rows before the position, tokenize none of them
                first_row = start.row
                rows = islice(rows, start.row, None)
            for row, ids in enumerate(self._encoded(rows), first_row):
                self._row = row
                if start is not None:  # the row the saved block ended in: counted already, partly trained on
                    if not ids or len(ids) < start.offset:
                        raise ValueError(f"rank {self._rank}: the saved data position (epoch {start.epoch}, row "
                                         f"{start.row:,}, token {start.offset:,}) is not in this rank's data: the "
                                         "training data changed since the checkpoint was written")
                    ids, self._offset_base, start = ids[start.offset:], start.offset, None
                    yield ids
                    continue
                self._offset_base = 0
                if ids is None:
                    self.stats.skipped_malformed += 1
                elif not ids:
                    self.stats.skipped_empty += 1
                else:
                    self.stats.documents += 1
                    self.stats.tokens += len(ids)
                    self._epoch_documents += 1
                    yield ids
            if start is not None:
                raise ValueError(f"rank {self._rank}: the saved data position (epoch {start.epoch}, row {start.row:,}) "
                                 "is past the end of this rank's data: the training data changed since the checkpoint "
                                 "was written")
            if self._epoch_documents == 0:
                raise ValueError(f"rank {self._rank} of {self._world_size} received no non-empty training "
                                 "document (data.train_files / data.name / data.text_field); so far "
                                 f"{self.stats.skipped_empty} empty documents and {self.stats.skipped_malformed} "
                                 "malformed rows were skipped")
            if self.first_epoch_tokens is None:
                self.first_epoch_tokens = self.stats.tokens
            self.epoch += 1
            self._epoch_documents = 0

    def _encoded(self, rows: Iterator[dict]) -> Iterator[Optional[List[int]]]:
        """Each row's tokens (``encode_documents``), tokenized ``data.tokenize_batch_size`` rows at a time."""
        cfg = self._data_cfg
        while True:
            texts = [row["text"] for row in islice(rows, cfg.tokenize_batch_size)]
            if not texts:
                return
            yield from encode_documents(texts, self._tokenizer, cfg.text_field, cfg.bad_rows)


def train_blocks(data_cfg, tokenizer, seq_len: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_block: int = 0, position: Optional[dict] = None):
    """The training stream: shard by rank, shuffle by ``seed``, tokenize, pack; infinite and resumable.
    ``position``: a ``state_dict()`` of the same rank's stream at ``start_block`` (saved in the checkpoint).
    ``data.source=tokens``: blocks of pretokenized shards in a seeded global order (``polycom.data.tokens``)."""
    if data_cfg.source == "tokens":
        from polycom.data.tokens import token_train_blocks

        return token_train_blocks(data_cfg, seq_len, seed, rank, world_size, start_block)
    saved = StreamPosition.from_dict(position) if position else None
    stream = BlockStream(data_cfg, tokenizer, seq_len, seed, rank, world_size, start_block, saved)
    depth = getattr(data_cfg, "prefetch_blocks", 0)
    if not depth:
        return stream
    from polycom.data.prefetch import Prefetched

    return Prefetched(stream, depth)


STREAMING_TOKENS_PER_S = 450_000  # one process re-tokenizing Gutenberg or the embedded corpus (scripts/benchmark_data.py)


def _log_fast_forward(blocks: int, seq_len: int, rank: int) -> None:
    """One line before a streaming resume re-reads what this process already trained on."""
    if rank == 0:
        tokens = blocks * seq_len
        log.info("streaming data: resuming at block %s without a saved data position (a checkpoint from before "
                 "positions were saved, or another number of processes) re-reads and re-tokenizes the %s tokens this "
                 "process already trained on: about %.0f s at ~%s tokens/s. Pretokenized data "
                 "(scripts/pretokenize.py, data=tokens) resumes by a seek", f"{blocks:,}",
                 f"{tokens:,}", tokens / STREAMING_TOKENS_PER_S, f"{STREAMING_TOKENS_PER_S:,}")


def validation_blocks(data_cfg, tokenizer, seq_len: int, num_blocks: int) -> torch.Tensor:
    """The first ``num_blocks`` blocks of the validation documents, in source order: the same tokens for
    every run and world size. Shape ``(num_blocks, seq_len)``."""
    if num_blocks < 1:
        raise ValueError(f"eval.val_tokens: {num_blocks} validation blocks asked for; at least one is needed")
    if data_cfg.source == "tokens":
        from polycom.data.tokens import token_validation_blocks

        return token_validation_blocks(data_cfg, seq_len, num_blocks)
    tokenized = tokenize_stream(text_stream(data_cfg, "validation"), tokenizer, data_cfg)
    stats = PipelineStats()
    blocks = list(islice(pack(_nonempty_documents(tokenized, stats), seq_len), num_blocks))
    if stats.skipped_malformed:
        log.warning("validation data: skipped %d malformed rows (data.bad_rows=skip)", stats.skipped_malformed)
    if len(blocks) < num_blocks:
        raise ValueError(f"eval.val_tokens: the validation data holds only {len(blocks)} blocks of {seq_len} "
                         f"tokens ({stats.tokens} tokens), but {num_blocks} blocks ({num_blocks * seq_len} tokens) "
                         f"were asked for; {_more_validation_data(data_cfg, len(blocks), seq_len)}")
    return torch.from_numpy(np.stack(blocks))


def _more_validation_data(data_cfg, available: int, seq_len: int) -> str:
    """What fixes a validation split smaller than ``eval.val_tokens`` (which cannot go below one block)."""
    if data_cfg.source == "local":
        more = "more text in data.validation_files" if data_cfg.validation_files else "a larger data.validation_fraction"
    elif data_cfg.source == "hub":
        more = "a larger data.validation_split" if data_cfg.validation_split else "a larger data.validation_fraction"
    else:
        more = None
    either = f"{more}, or " if more else ""
    if available == 0:
        return f"it holds less than one block: give {either}a smaller trainer.seq_len"
    return f"set eval.val_tokens={available * seq_len} (or less){', or give ' + more if more else ''}"


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

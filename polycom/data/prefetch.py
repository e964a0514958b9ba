"""Blocks prepared ahead of the step: a background thread reads, tokenizes and packs the streaming data into a
bounded queue while the training step runs, so the step does not wait for the tokenizer (``data.prefetch_blocks``).

A thread, not a process: the Rust tokenizer releases the GIL while it encodes a batch, and so do PyTorch's
kernels, so reading, tokenizing and the step overlap. The blocks come out in the order the stream makes them, so a
run with prefetching sees exactly the blocks of a run without it (tested). Each block travels with the stream's
position after it (``state_dict()``), so what the trainer reads here (``epoch``, ``stats``, ``blocks_emitted``,
``first_epoch_tokens``, ``state_dict()``) is of the blocks it has taken, not of the blocks made ahead.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import asdict
from typing import Iterator

import torch

from polycom.data.packing import PipelineStats

_DONE = object()


class Prefetched:
    """``stream``'s blocks, made up to ``depth`` blocks ahead by a daemon thread; attributes read through to
    ``stream``. The thread ends when the stream does, raises (re-raised here, in order) or this object is dropped."""

    def __init__(self, stream, depth: int):
        if depth < 1:
            raise ValueError(f"data.prefetch_blocks={depth} must be >= 1 (0 turns prefetching off)")
        self.stream = stream
        self._position = stream.state_dict()  # before the first block: the saved one, if any
        self._counters = {"blocks_emitted": stream.blocks_emitted, "epoch": stream.epoch,
                          "first_epoch_tokens": stream.first_epoch_tokens, "stats": asdict(stream.stats)}
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_produce, args=(_with_positions(stream), self._queue, self._stop),
                                        name="polycom-data-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> "Prefetched":
        return self

    def __next__(self) -> torch.Tensor:
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)  # every later call stops too
            raise StopIteration
        if isinstance(item, BaseException):
            self._queue.put(item)
            raise item
        block, self._position = item
        self._counters = self._position
        return block

    def state_dict(self):
        """The stream's position after the last block taken from here."""
        return self._position

    @property
    def blocks_emitted(self) -> int:
        return self._taken("blocks_emitted")

    @property
    def epoch(self) -> int:
        return self._taken("epoch")

    @property
    def first_epoch_tokens(self):
        return self._taken("first_epoch_tokens")

    @property
    def stats(self) -> PipelineStats:
        return PipelineStats(**self._counters["stats"])

    def _taken(self, name: str):
        """A counter as of the last block taken (before the first: as when the stream was wrapped)."""
        return self._counters[name]

    def __getattr__(self, name: str):
        return getattr(self.__dict__["stream"], name)

    def close(self) -> None:
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


def _with_positions(stream) -> Iterator[tuple]:
    for block in stream:
        yield block, stream.state_dict()


def _produce(blocks: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    item = None
    try:
        for item in blocks:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        item = _DONE
    except BaseException as err:  # handed to the consumer, raised there
        item = err
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue

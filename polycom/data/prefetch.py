"""Blocks prepared ahead of the step: a background thread reads, tokenizes and packs the streaming data into a
bounded queue while the training step runs, so the step does not wait for the tokenizer (``data.prefetch_blocks``).

A thread, not a process: the Rust tokenizer releases the GIL while it encodes a batch, and so do PyTorch's
kernels, so reading, tokenizing and the step overlap. The blocks come out in the order the stream makes them, so a
run with prefetching sees exactly the blocks of a run without it (tested), and resume is unchanged. The wrapped
stream's counters (``epoch``, ``stats``, ...) run ahead of the trainer by at most the queue's length.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import torch

_DONE = object()


class Prefetched:
    """``stream``'s blocks, made up to ``depth`` blocks ahead by a daemon thread; attributes read through to
    ``stream``. The thread ends when the stream does, raises (re-raised here, in order) or this object is dropped."""

    def __init__(self, stream, depth: int):
        if depth < 1:
            raise ValueError(f"data.prefetch_blocks={depth} must be >= 1 (0 turns prefetching off)")
        self.stream = stream
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_produce, args=(iter(stream), self._queue, self._stop),
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
        return item

    def __getattr__(self, name: str):
        return getattr(self.__dict__["stream"], name)

    def close(self) -> None:
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


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

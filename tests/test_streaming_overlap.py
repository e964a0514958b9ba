"""The streaming path prepares blocks ahead of the step (data.prefetch_blocks, polycom.data.prefetch) and says what a
resume costs it."""

import json
import logging
import time

import pytest
import torch
from pydoc_data.topics import topics

from polycom.data import DataConfig, train_blocks
from polycom.data.prefetch import Prefetched

DOCS = [topics[name][:1500] for name in sorted(topics)[:40]]


@pytest.fixture
def corpus_cfg(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    return lambda **kw: DataConfig(source="local", train_files=[str(path)], shuffle_buffer=8, **kw)


def take(stream, k):
    return torch.stack([next(stream) for _ in range(k)])


@pytest.mark.parametrize("start", [0, 57])
def test_prefetching_yields_the_blocks_of_the_plain_stream(corpus_cfg, tiny_tokenizer, start):
    plain = train_blocks(corpus_cfg(), tiny_tokenizer, 64, seed=1, start_block=start)
    ahead = train_blocks(corpus_cfg(prefetch_blocks=5), tiny_tokenizer, 64, seed=1, start_block=start)
    assert isinstance(ahead, Prefetched)
    assert torch.equal(take(ahead, 700), take(plain, 700))  # over two epochs of this corpus
    assert ahead.epoch >= plain.epoch >= 2 and ahead.stats.documents >= plain.stats.documents  # read through


def test_blocks_are_made_while_the_consumer_is_busy(corpus_cfg, tiny_tokenizer):
    depth = 6
    ahead = train_blocks(corpus_cfg(prefetch_blocks=depth), tiny_tokenizer, 64, seed=0)
    next(ahead)
    deadline = time.monotonic() + 30
    while ahead._queue.qsize() < depth and time.monotonic() < deadline:
        time.sleep(0.01)  # the "step": the consumer asks for nothing
    assert ahead._queue.qsize() == depth  # made while the consumer was busy
    time.sleep(0.5)  # time for a producer that ignored the bound to run on
    # Bounded: the one taken, a full queue, and at most the one block the producer holds while it waits for room.
    assert 1 + depth <= ahead.stream.blocks_emitted <= 1 + depth + 1
    assert ahead.blocks_emitted == 1  # what the trainer reads (and saves) is of the blocks it took


def test_an_error_of_the_stream_reaches_the_consumer(tmp_path, tiny_tokenizer):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"text": "  "}\n' * 3)
    ahead = train_blocks(DataConfig(source="local", train_files=[str(path)], prefetch_blocks=2), tiny_tokenizer, 16,
                         seed=0)
    for _ in range(2):  # and again on the next call
        with pytest.raises(ValueError, match="no non-empty training document"):
            next(ahead)


def test_a_streaming_resume_says_what_it_re_reads(corpus_cfg, tiny_tokenizer, caplog):
    with caplog.at_level(logging.INFO, logger="polycom.data.packing"):
        next(train_blocks(corpus_cfg(), tiny_tokenizer, 64, seed=0, start_block=100))
    lines = [r.message for r in caplog.records if "re-tokenizes" in r.message]
    assert len(lines) == 1 and "the 6,400 tokens" in lines[0] and "data=tokens" in lines[0]

"""A streaming resume from a saved position (``BlockStream.state_dict``, saved with each checkpoint): the same blocks
and counters as the uninterrupted stream, without tokenizing the rows before the position."""

import json

import pytest
import torch
from pydoc_data.topics import topics

from polycom.data import DataConfig, train_blocks
from polycom.data import packing
from polycom.data.packing import PipelineStats, _nonempty_documents, pack, tokenize_stream
from polycom.data.sources import train_stream

SEQ_LEN = 64
TOTAL = 240  # blocks: 2.6 epochs of the corpus below


@pytest.fixture
def corpus_cfg(tmp_path):
    """40 documents of very different lengths (some longer than several blocks), an empty one and a malformed one."""
    rows = [{"text": topics[name][: 40 + 97 * i % 600]} for i, name in enumerate(sorted(topics)[:40])]
    rows[7] = {"text": "   "}
    rows[23] = {"text": None}
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return lambda **kw: DataConfig(source="local", train_files=[str(path)], shuffle_buffer=8, bad_rows="skip",
                                   tokenize_batch_size=5, **kw)


def take(stream, k):
    return [next(stream) for _ in range(k)]


def test_the_stream_is_the_shuffled_tokenized_documents_packed_epoch_after_epoch(corpus_cfg, tiny_tokenizer):
    """The order a run trains on: ``datasets``' seeded shuffle of each epoch, tokenized, packed (the same blocks the
    HF-map pipeline gives, so runs made before positions were saved are continued on the same data)."""
    cfg = corpus_cfg()

    def documents():
        tokenized, stats = tokenize_stream(train_stream(cfg, seed=3), tiny_tokenizer, cfg), PipelineStats()
        for epoch in range(4):
            tokenized.set_epoch(epoch)
            yield from _nonempty_documents(tokenized, stats)

    expected = list(pack(documents(), SEQ_LEN))
    stream = train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=3)
    got = take(stream, len(expected) - 5)
    assert stream.epoch == 3
    assert all(torch.equal(a, torch.from_numpy(b)) for a, b in zip(got, expected))


def _counters(stream) -> tuple:
    return stream.blocks_emitted, stream.epoch, stream.first_epoch_tokens, stream.stats


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resuming_from_a_saved_position_gives_the_blocks_and_counters_of_the_straight_stream(
        corpus_cfg, tiny_tokenizer, prefetch):
    cfg = corpus_cfg(prefetch_blocks=prefetch)
    straight = train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=1)
    blocks, positions, counters = [], [None], [None]
    for _ in range(TOTAL):  # over several epochs: the 40 documents are ~90 blocks
        blocks.append(next(straight))
        positions.append(straight.state_dict())
        counters.append(_counters(straight))
    assert straight.epoch >= 2
    ends_at_row_end = [n for n in range(1, TOTAL) if positions[n]["offset"] == _row_length(cfg, tiny_tokenizer,
                                                                                           positions[n])]
    first_of_epoch = [n for n in range(2, TOTAL) if positions[n]["epoch"] != positions[n - 1]["epoch"]]
    for n in sorted({1, 2, 17, 89, 90, 91, 201, *ends_at_row_end[:2], *first_of_epoch}):
        resumed = train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=1, start_block=n, position=positions[n])
        assert resumed.state_dict() == positions[n]  # saved again unchanged before a step
        for m in range(n + 1, TOTAL + 1):  # each block, and each position a checkpoint would save on the way
            assert torch.equal(next(resumed), blocks[m - 1]), f"resumed after block {n}: block {m}"
            assert resumed.state_dict() == positions[m], f"resumed after block {n}: position after block {m}"
        assert _counters(resumed) == counters[TOTAL]
    assert first_of_epoch, "no resume point at an epoch's first block"


def _row_length(cfg, tokenizer, position) -> int:
    """The tokens of the row a position is in (to find positions that end exactly at a document's end)."""
    ds = train_stream(cfg, seed=1)
    ds.set_epoch(position["epoch"])
    text = next(row for i, row in enumerate(ds) if i == position["row"])["text"]
    return len(packing.encode_documents([text], tokenizer, cfg.text_field, cfg.bad_rows)[0])


def test_a_resume_tokenizes_only_from_the_saved_row_on(corpus_cfg, tiny_tokenizer, monkeypatch):
    cfg = corpus_cfg()
    straight = train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=0)
    take(straight, 120)
    position = straight.state_dict()
    assert position["epoch"] == 1 and position["row"] > 10

    tokenized = []
    real = packing.encode_documents
    monkeypatch.setattr(packing, "encode_documents", lambda texts, *a: tokenized.extend(texts) or real(texts, *a))
    next(train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=0, start_block=120, position=position))
    assert len(tokenized) <= 2 * cfg.tokenize_batch_size  # the saved row's batch (and the next, for a long block)
    tokenized.clear()
    next(train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=0, start_block=120))  # no position: the fast-forward
    assert len(tokenized) > 40  # every row of epoch 0 and the rows of epoch 1 before the position


def test_a_position_that_is_not_in_the_data_is_refused(corpus_cfg, tiny_tokenizer):
    cfg = corpus_cfg()
    straight = train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=0)
    take(straight, 10)
    position = straight.state_dict()
    with pytest.raises(ValueError, match="saved data position is after block 10, but the run resumes at block 11"):
        train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=0, start_block=11, position=position)
    past_the_end = {**position, "row": 10_000}
    with pytest.raises(ValueError, match=r"row 10,000\) is past the end of this rank's data: the training data "
                                         "changed"):
        next(train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=0, start_block=10, position=past_the_end))
    too_far_in = {**position, "offset": 10**6}
    with pytest.raises(ValueError, match="is not in this rank's data: the training data changed"):
        next(train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=0, start_block=10, position=too_far_in))


def test_the_trainer_takes_its_own_rank_s_saved_position_and_warns_when_the_world_size_changed(tmp_path, caplog):
    from types import SimpleNamespace

    from polycom.train.checkpoint import TRAINER_STATE
    from polycom.train.trainer import _saved_data_position

    def ranks(world, rank=0):
        return SimpleNamespace(num_processes=world, process_index=rank, is_main_process=rank == 0)

    (tmp_path / TRAINER_STATE).write_text(json.dumps({"step": 3, "data_positions": [{"row": 5}, {"row": 9}],
                                                      "data_stream_key": "k"}))
    assert _saved_data_position(tmp_path, ranks(2, 1), "k") == {"row": 9}
    assert _saved_data_position(None, ranks(2, 1), "k") is None
    assert not caplog.records
    with caplog.at_level("WARNING"):
        assert _saved_data_position(tmp_path, ranks(4, 0), "k") is None
    assert "written by 2 processes and this run has 4" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert _saved_data_position(tmp_path, ranks(2, 1), "another seed") is None
    assert "of another data stream" in caplog.text
    caplog.clear()
    (tmp_path / TRAINER_STATE).write_text(json.dumps({"step": 3, "data_positions": [None, None]}))  # data=tokens
    with caplog.at_level("WARNING"):
        assert _saved_data_position(tmp_path, ranks(4, 0), "k") is None
    assert not caplog.records


def test_the_data_stream_key_follows_what_the_positions_depend_on():
    from polycom.train.build import compose_config
    from polycom.train.trainer import data_stream_key

    base = data_stream_key(compose_config([]))
    assert data_stream_key(compose_config(["data.prefetch_blocks=8", "optim.lr=1e-2"])) == base
    for override in ("seed=7", "data.shuffle_buffer=5", "trainer.seq_len=64", "tokenizer.vocab_size=1024"):
        assert data_stream_key(compose_config([override])) != base, override

"""Which part of the training data each process reads (polycom.data.sources.rank_part): never all of it when the
shards can be split, whatever the number of processes."""

import json
import logging

import pytest
from pydoc_data.topics import topics

from polycom.data import DataConfig, train_stream
from polycom.data import sources
from polycom.data.rows import json_line_range, read_rows

DOCS = [topics[name][:200] for name in sorted(topics)[:30]]


def write_jsonl(path, texts, prefix=b""):
    path.write_bytes(prefix + b"".join(json.dumps({"text": t}).encode() + b"\r\n" for t in texts))
    return str(path)


def documents_per_rank(cfg, world):
    return [[row["text"] for row in train_stream(cfg, seed=0, rank=r, world_size=world)] for r in range(world)]


@pytest.fixture
def opened(monkeypatch):
    """The files (whole) and byte ranges each rank's stream reads."""
    log = []

    def whole(path, *args, **kwargs):
        log.append((path, "whole"))
        return read_rows(path, *args, **kwargs)

    def ranged(path, field, piece, pieces):
        log.append((path, piece))
        return json_line_range(path, field, piece, pieces)

    monkeypatch.setattr(sources, "read_rows", whole)
    monkeypatch.setattr(sources, "json_line_range", ranged)
    return log


def test_more_shards_than_ranks_but_not_a_multiple_gives_each_rank_whole_files(tmp_path, opened):
    files = [write_jsonl(tmp_path / f"f{i}.jsonl", DOCS[i * 6:(i + 1) * 6]) for i in range(5)]
    cfg = DataConfig(source="local", train_files=files, shuffle_buffer=4)
    ranks = []
    for rank in range(3):
        opened.clear()
        ranks.append([row["text"] for row in train_stream(cfg, seed=0, rank=rank, world_size=3)])
        mine = {path for path, _ in opened}
        assert len(mine) in (1, 2) and all(kind == "whole" for _, kind in opened)
        assert sorted(ranks[-1]) == sorted(d for i, f in enumerate(files) if f in mine for d in DOCS[i * 6:(i + 1) * 6])
    assert sorted(sum(ranks, [])) == sorted(DOCS)


@pytest.mark.parametrize("world", [2, 3, 7])
def test_fewer_files_than_ranks_are_split_into_byte_ranges_that_cover_every_row_once(tmp_path, opened, world):
    path = write_jsonl(tmp_path / "one.jsonl", DOCS, prefix=b"\xef\xbb\xbf")
    cfg = DataConfig(source="local", train_files=[path], shuffle_buffer=1)
    ranks = []
    for rank in range(world):
        opened.clear()
        ranks.append([row["text"] for row in train_stream(cfg, seed=0, rank=rank, world_size=world)])
        assert len(opened) == 1 and opened[0][1] != "whole"  # one byte range, never the whole file
    assert sorted(sum(ranks, [])) == sorted(DOCS)
    assert all(ranks)


def test_a_bad_row_in_a_byte_range_names_its_true_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": t}) for t in DOCS[:20]]
    lines[14] = '{"text": 3}'
    path.write_text("\n".join(lines) + "\n")
    rows = [row for piece in range(3) for row in json_line_range(str(path), "text", piece, 3)]
    assert rows[:14] == DOCS[:14] and rows[15:] == DOCS[15:20]
    assert "line 15" in str(rows[14])


def test_unsplittable_sources_are_read_by_every_rank_and_say_so(tmp_path, caplog):
    lines = [doc.replace("\n", " ") for doc in DOCS]
    path = tmp_path / "book.txt"
    path.write_text("\n".join(lines))
    cfg = DataConfig(source="local", train_files=[str(path)], format="text", sample_by="line", shuffle_buffer=1)
    with caplog.at_level(logging.WARNING):
        ranks = documents_per_rank(cfg, 2)
    assert sorted(ranks[0] + ranks[1]) == sorted(lines) and set(ranks[0]).isdisjoint(ranks[1])
    assert any("cannot be split by rows" in r.message for r in caplog.records)

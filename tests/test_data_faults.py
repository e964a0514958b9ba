"""Bad data (polycom.data, data.bad_rows): every fault gives a clear error naming the file and line at startup
(bad_rows=error) or is skipped and counted (bad_rows=skip); never a hang or a crash deep in the loop."""

import gzip
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from polycom.data import DataConfig, PipelineStats, text_stream, train_blocks, validate_data_config
from polycom.data import config as config_module
from polycom.data.packing import _nonempty_documents, tokenize_stream
from polycom.data.rows import read_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
GOOD = ["The first good document, with a few words.", "The second good document is a little longer.",
        "A third good one ends the file."]
SEQ_LEN = 16
LONG = " ".join(f"word{i}" for i in range(200))  # far more than 10 * SEQ_LEN tokens


def jsonl(*lines) -> bytes:
    """A jsonl file: dicts are dumped, bytes are written as they are (a malformed line)."""
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def t(text: str) -> dict:
    return {"id": 0, "text": text}


@dataclass
class Fault:
    files: Dict[str, bytes]  # file name -> content
    pattern: str = "*"
    sample_by: str = "document"
    error: Optional[str] = None  # regex of the bad_rows=error message ({dir} = the folder), None: no error
    error_count: str = ""  # regex the startup message adds: how many more bad rows the file holds
    config_error_in_skip_mode: bool = False  # a file problem, not a row problem: an error in both modes
    good: List[str] = field(default_factory=lambda: [GOOD[0], GOOD[2]])  # what the stream yields, in order
    malformed: int = 1  # rows skipped as malformed with bad_rows=skip
    empty: int = 0  # documents skipped as empty (both modes)


FAULTS = {
    "missing_path": Fault({}, pattern="missing-*.jsonl", config_error_in_skip_mode=True,
                          error=r"data.train_files: no file matches '{dir}/missing-\*.jsonl'"),
    "empty_file": Fault({"a.jsonl": jsonl(t(GOOD[0])), "b.jsonl": b""}, config_error_in_skip_mode=True,
                        error=r"data.train_files: {dir}/b.jsonl is empty"),
    "invalid_utf8_jsonl": Fault({"a.jsonl": jsonl(t(GOOD[0]), b'{"text": "caf\xe9 au lait"}', t(GOOD[2]))},
                                error=r"{dir}/a.jsonl line 2 is not valid UTF-8 \(byte 0xe9"),
    "invalid_utf8_txt_paragraph": Fault(
        {"a.txt": f"{GOOD[0]}\n\nline one\nline two \xff\xfe\n\n{GOOD[2]}".encode("latin-1")},
        sample_by="paragraph", error=r"{dir}/a.txt line 4 is not valid UTF-8 \(byte 0xff"),
    "invalid_utf8_txt_document": Fault(  # one document per file: the whole file is the bad row
        {"d0.txt": GOOD[0].encode(), "d1.txt": b"ok\nthen \x80 bad", "d2.txt": GOOD[2].encode()},
        error=r"{dir}/d1.txt line 2 is not valid UTF-8 \(byte 0x80"),
    "not_json_mid_file": Fault(
        {"a.jsonl": jsonl(t(GOOD[0]), t(GOOD[1]), b'{"text": "no closing quote}', t(GOOD[2]))},
        error=r"{dir}/a.jsonl line 3 is not valid JSON \(Unterminated string", good=GOOD),
    "not_an_object": Fault({"a.jsonl": jsonl(t(GOOD[0]), ["a", "list"], t(GOOD[2]))},
                           error=r"{dir}/a.jsonl line 2 is not a JSON object but an array"),
    "missing_text_field": Fault({"a.jsonl": jsonl(t(GOOD[0]), {"id": 1, "body": "x"}, t(GOOD[2]))},
                                error=r"data.text_field='text' not found in {dir}/a.jsonl line 2 \(fields: id, body\)"),
    "non_str_text": Fault({"a.jsonl": jsonl(t(GOOD[0]), {"text": 42}, {"text": None}, t(GOOD[2]))},
                          error=r"data.text_field='text' in {dir}/a.jsonl line 2 is int, not str: 42",
                          error_count=r" \(and 1 more bad rows in the file\)", malformed=2),
    "whitespace_document": Fault({"a.jsonl": jsonl(t(GOOD[0]), t(" \n\t  "), t(GOOD[2]))}, malformed=0, empty=1),
    "long_document": Fault({"a.jsonl": jsonl(t(GOOD[0]), t(LONG), t(GOOD[2]))}, good=[GOOD[0], LONG, GOOD[2]],
                           malformed=0),
}


def make_cfg(folder: Path, fault: Fault, bad_rows: str) -> DataConfig:
    folder.mkdir()
    for name, content in fault.files.items():
        (folder / name).write_bytes(content)
    return DataConfig(source="local", train_files=[str(folder / fault.pattern)], validation_fraction=0.1,
                      sample_by=fault.sample_by, bad_rows=bad_rows, shuffle_buffer=1)


def documents(cfg, tokenizer, stats: PipelineStats) -> List[List[int]]:
    """The token lists the training stream packs, in source order (unshuffled), counting skips in stats."""
    return list(_nonempty_documents(tokenize_stream(text_stream(cfg, "train"), tokenizer, cfg), stats))


def encoded(tokenizer, texts) -> List[List[int]]:
    return [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]


@pytest.mark.parametrize("name", FAULTS)
def test_error_mode_names_the_file_and_line_at_startup(tmp_path, tiny_tokenizer, name):
    fault = FAULTS[name]
    folder = tmp_path / "data"
    cfg = make_cfg(folder, fault, "error")
    if fault.error is None:  # not an error: empty documents are skipped and counted, long ones packed
        validate_data_config(cfg)
        stats = PipelineStats()
        assert documents(cfg, tokenizer=tiny_tokenizer, stats=stats) == encoded(tiny_tokenizer, fault.good)
        assert (stats.skipped_empty, stats.skipped_malformed) == (fault.empty, 0)
        return
    message = fault.error.format(dir=re.escape(str(folder)))
    with pytest.raises(ValueError, match=message + fault.error_count) as err:
        validate_data_config(cfg)
    assert str(err.value).startswith("data.train_files: ") or "data.text_field=" in str(err.value)
    if not fault.config_error_in_skip_mode:
        assert "data.bad_rows=skip" in str(err.value)
        # the stream itself also stops at the bad row with the same words (when not validated first)
        with pytest.raises(ValueError, match=message):
            documents(cfg, tiny_tokenizer, PipelineStats())


@pytest.mark.parametrize("name", FAULTS)
def test_skip_mode_yields_the_good_documents_in_order_and_counts_the_rest(tmp_path, tiny_tokenizer, name):
    fault = FAULTS[name]
    folder = tmp_path / "data"
    cfg = make_cfg(folder, fault, "skip")
    if fault.config_error_in_skip_mode:
        with pytest.raises(ValueError, match=fault.error.format(dir=re.escape(str(folder)))):
            validate_data_config(cfg)
        return
    validate_data_config(cfg)
    stats = PipelineStats()
    assert documents(cfg, tiny_tokenizer, stats) == encoded(tiny_tokenizer, fault.good)
    assert (stats.documents, stats.skipped_malformed, stats.skipped_empty) == (
        len(fault.good), fault.malformed, fault.empty)


@pytest.mark.parametrize("bad_rows", ["error", "skip"])
def test_a_long_document_is_packed_across_blocks_with_every_token_in_order(tmp_path, tiny_tokenizer, bad_rows):
    cfg = make_cfg(tmp_path / "data", FAULTS["long_document"], bad_rows)
    validate_data_config(cfg)
    expected = [token for ids in encoded(tiny_tokenizer, FAULTS["long_document"].good) for token in ids]
    assert len(encoded(tiny_tokenizer, [LONG])[0]) > 10 * SEQ_LEN
    stream = train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=0)
    blocks = [next(stream) for _ in range(len(expected) // SEQ_LEN)]
    assert torch.cat(blocks).tolist() == expected[: len(blocks) * SEQ_LEN]
    assert stream.epoch == 0


def test_skip_mode_block_stream_counts_across_epochs_and_warns_once_per_file(tmp_path, tiny_tokenizer, caplog):
    fault = FAULTS["non_str_text"]
    cfg = make_cfg(tmp_path / "data", fault, "skip")
    epoch_tokens = sum(map(len, encoded(tiny_tokenizer, fault.good)))
    stream = train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=0)
    with caplog.at_level(logging.WARNING, logger="polycom.data.sources"):
        blocks = [next(stream) for _ in range(3 * epoch_tokens // SEQ_LEN)]  # three passes over the file
    assert stream.epoch >= 2
    expected = [token for ids in encoded(tiny_tokenizer, fault.good) for token in ids] * 3
    assert torch.cat(blocks).tolist() == expected[: len(blocks) * SEQ_LEN]
    assert stream.stats.skipped_malformed == 2 * (stream.epoch + 1)
    warnings = [r.getMessage() for r in caplog.records if "skipping the malformed rows" in r.getMessage()]
    assert len(warnings) == 1 and re.search(r"a\.jsonl line 2 is int, not str", warnings[0]), warnings


@pytest.mark.timeout(60)
def test_an_all_bad_file_in_skip_mode_raises_instead_of_hanging(tmp_path, tiny_tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl({"body": "wrong field"}, b"not json", {"text": None}))
    cfg = DataConfig(source="local", train_files=[str(path)], validation_fraction=0.1, bad_rows="skip")
    with pytest.raises(ValueError, match=r"none of the 3 rows of 1 file\(s\) is usable.*line 1"):
        validate_data_config(cfg)
    stream = train_blocks(cfg, tiny_tokenizer, SEQ_LEN, seed=0)
    with pytest.raises(ValueError, match="received no non-empty training document.* 3 malformed rows"):
        next(stream)


def test_hub_rows_without_a_string_text_are_an_error_or_skipped(monkeypatch, tiny_tokenizer):
    rows = [{"story": GOOD[0]}, {"story": None}, {"story": GOOD[1]}, {"story": None}, {"story": GOOD[2]}]

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        return datasets.IterableDataset.from_generator(lambda: iter(rows), features=datasets.Features(
            {"story": datasets.Value("string"), "id": datasets.Value("int64")}))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(source="hub", name="org/stories", validation_split=None, validation_fraction=0.3,
                     text_field="story")
    validate_data_config(cfg)
    with pytest.raises(TypeError, match="data.text_field='story': .*NoneType.*data.bad_rows=skip"):
        documents(cfg, tiny_tokenizer, PipelineStats())
    cfg.bad_rows = "skip"
    validate_data_config(cfg)
    stats = PipelineStats()
    train = documents(cfg, tiny_tokenizer, stats)
    validation = [row["text"] for row in text_stream(cfg, "validation")]
    assert all(isinstance(text, str) for text in validation)  # malformed rows stay on the train side
    assert sorted(train + encoded(tiny_tokenizer, validation)) == sorted(encoded(tiny_tokenizer, GOOD))
    assert (stats.documents, stats.skipped_malformed) == (len(train), 2)


def test_parquet_schema_and_nulls_are_checked_from_the_footer(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [0, 1, 2], "text": [GOOD[0], None, GOOD[2]]}), path)
    cfg = DataConfig(source="local", train_files=[str(path)], validation_fraction=0.1)
    with pytest.raises(ValueError, match=re.escape(f"data.text_field='text' is null in 1 rows of {path}")):
        validate_data_config(cfg)
    cfg.bad_rows = "skip"
    validate_data_config(cfg)  # the null row will be skipped and counted
    for name, table, error in [
        ("numbers.parquet", pa.table({"text": [1, 2]}), "is a column of int64, not of strings"),
        ("other.parquet", pa.table({"body": ["x"]}), "data.text_field='text' not found in .*other.parquet"),
    ]:
        pq.write_table(table, tmp_path / name)
        cfg.train_files = [str(tmp_path / name)]
        with pytest.raises(ValueError, match=error):
            validate_data_config(cfg)
    (tmp_path / "junk.parquet").write_bytes(b"not a parquet file at all")
    cfg.train_files = [str(tmp_path / "junk.parquet")]
    with pytest.raises(ValueError, match="junk.parquet is not a readable parquet file"):
        validate_data_config(cfg)


def test_bad_rows_must_be_error_or_skip():
    with pytest.raises(ValueError, match="data.bad_rows='ignore' is not one of error, skip"):
        validate_data_config(DataConfig(bad_rows="ignore"))


def test_the_scan_is_redone_when_a_file_changes(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl(*map(t, GOOD)))
    cfg = DataConfig(source="local", train_files=[str(path)], validation_fraction=0.1)
    validate_data_config(cfg)
    with open(path, "ab") as f:
        f.write(b"{oops\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} line 4 is not valid JSON")):
        validate_data_config(cfg)


# Rows of clean files are exactly those of the datasets builders the reader replaces, so switching reader
# changes neither the cached BPE's fingerprint nor the hash-chosen validation documents.
CLEAN_TEXTS = {"crlf.txt": b"a\r\nb\r\n\r\nc\r\n", "cr.txt": b"a\rb\r\rc", "blank_runs.txt": b"\n\na\n\n\n\nb\n\n",
               "bom_unicode.txt": "\ufeffhi\u2028there\x0b\n\n\u00e9t\u00e9\n".encode(), "no_newline.txt": b"x"}


def test_the_reader_gives_the_rows_of_the_datasets_builders(tmp_path):
    cases = []
    for name, content in CLEAN_TEXTS.items():
        (tmp_path / name).write_bytes(content)
        cases += [(tmp_path / name, "text", sample_by) for sample_by in ("line", "paragraph", "document")]
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl(*map(t, GOOD[:2])) + b"\n  \r\n" + jsonl(t(GOOD[2])))
    (tmp_path / "array.json").write_text(json.dumps([t(text) for text in GOOD], indent=2))
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(jsonl(*map(t, GOOD))))
    (tmp_path / "crlf.txt.gz").write_bytes(gzip.compress(CLEAN_TEXTS["crlf.txt"]))
    cases += [(tmp_path / "a.jsonl", "json", "document"), (tmp_path / "array.json", "json", "document"),
              (tmp_path / "c.jsonl.gz", "json", "document"), (tmp_path / "crlf.txt.gz", "text", "paragraph")]
    for path, builder, sample_by in cases:
        options = {"sample_by": sample_by} if builder == "text" else {}
        expected = [row["text"] for row in datasets.load_dataset(builder, data_files=[str(path)], split="train",
                                                                 streaming=True, **options)]
        assert list(read_rows(str(path), builder, "text", sample_by)) == expected, (path.name, sample_by)


def test_skip_and_error_modes_stream_a_clean_corpus_identically(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    texts = [f"Document {i}: " + "some words " * (i % 7) for i in range(40)]
    for part in range(4):
        (folder / f"part-{part}.jsonl").write_bytes(jsonl(*map(t, texts[part::4])))
    streams = {}
    for bad_rows in ("error", "skip"):
        cfg = DataConfig(source="local", train_files=[str(folder / "*.jsonl")], validation_fraction=0.1,
                         bad_rows=bad_rows, shuffle_buffer=5)
        streams[bad_rows] = [[row["text"] for row in text_stream(cfg, split)] for split in ("train", "validation")]
    assert streams["error"] == streams["skip"]
    assert sorted(streams["error"][0] + streams["error"][1]) == sorted(texts)


def test_prescan_of_the_gutenberg_books_completes(data_dir, monkeypatch):
    """The error-mode pre-scan reads all 72 MB of books; the time is for the record, not asserted."""
    root = OmegaConf.create({"paths": {"data_dir": str(data_dir)}})
    root.data = OmegaConf.merge(OmegaConf.structured(DataConfig),
                                OmegaConf.load(REPO_ROOT / "configs/data/gutenberg.yaml"))
    assert root.data.bad_rows == "error"
    monkeypatch.setattr(config_module, "_SCANS", {})  # no result remembered from another test
    start = time.perf_counter()
    validate_data_config(root.data)
    print(f"gutenberg pre-scan: {time.perf_counter() - start:.2f} s")
    assert len(config_module._SCANS) == len(list((data_dir / "corpus/gutenberg").glob("*.jsonl")))

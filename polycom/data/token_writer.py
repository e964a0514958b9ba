"""Writing a pretokenized folder (``scripts/pretokenize.py``): any data config's documents, tokenized by worker
processes, appended in source order to token shards of about ``shard_tokens`` tokens (the format is described in
:mod:`polycom.data.tokens`).

- Deterministic: one reader takes the documents in source order (``text_stream``, unshuffled) and the workers'
  results are taken back in that order, so the files do not depend on the number of workers; a shard ends at the
  first document boundary at or after ``shard_tokens`` tokens.
- Resumable: a shard is written aside and renamed, then ``index.json`` (replaced atomically) records it with the
  number of source rows read up to its last document. A killed run started again skips those rows (read, not
  tokenized) and writes the next shard; the result equals an uninterrupted run.
- One tokenizer per folder: the folder keeps the tokenizer (``tokenizer/``) and its hash; writing into a folder
  made with another tokenizer, data config or shard settings is refused. The index is written before the tokenizer
  is saved, so a run killed at any point leaves a folder the same command continues.
- Documents are tokenized exactly as the streaming path does (``polycom.data.packing.encode_documents``): tokens
  then EOS, empty documents and (``data.bad_rows=skip``) malformed rows skipped and counted.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
from omegaconf import OmegaConf

from polycom.data.tokens import (FORMAT, INDEX, SPLITS, TOKENIZER_DIR, hash_mismatch_hint, token_dtype, token_id_bound,
                                 tokenizer_hash, tokenizers_version)

log = logging.getLogger(__name__)

CHUNK_CHARS = 1 << 20  # characters per task sent to a worker
CHUNK_ROWS = 1024  # and at most this many rows
_TMP_TOKENIZER = ".tokenizer-"  # prefix of the folder a tokenizer is saved into before its rename to tokenizer/
PROGRESS_SECONDS = 60  # a progress line at most this often

_WORKER: dict = {}  # the tokenizer and settings of this (worker) process
# settings recorded in the index as its source, less those that do not change the tokens written (training-time
# settings, and where the tokenizer is cached)
_NOT_TOKENS = {"data": ("shuffle_buffer", "tokenize_batch_size", "prefetch_blocks", "document_mask", "path"),
               "tokenizer": ("cache_dir",)}


def pretokenize(cfg, out, workers: int = 0, shard_tokens: int = 50_000_000,
                max_tokens: Optional[dict] = None) -> dict:
    """Write (or complete) the pretokenized folder ``out`` for the ``data`` and ``tokenizer`` settings of ``cfg``.

    ``workers``: tokenizing processes (0: one per CPU core; 1: tokenize in this process). ``max_tokens``:
    ``{split: n}`` stops a split at the first document boundary at or after ``n`` tokens (a prefix of the data).
    Returns the index."""
    from polycom.data.config import validate_data_config
    from polycom.data.tokenizer import build_tokenizer

    if cfg.data.source == "tokens":
        raise ValueError("data.source=tokens is already pretokenized: give the data config of the text to tokenize "
                         "(data=gutenberg, data=local_jsonl ..., data=fineweb_edu)")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens={shard_tokens} must be >= 1")
    max_tokens = {split: (max_tokens or {}).get(split) for split in SPLITS}
    validate_data_config(cfg.data)
    out = Path(out)
    source = {group: {key: value for key, value in OmegaConf.to_container(cfg[group], resolve=True).items()
                      if key not in _NOT_TOKENS[group]} for group in _NOT_TOKENS}
    settings = {"shard_tokens": shard_tokens, "max_tokens": max_tokens}
    index = _existing_index(out, source, settings)
    if index is not None and index["complete"]:
        log.info("%s is complete already (%s train tokens); nothing to do", out,
                 f"{index['splits']['train']['num_tokens']:,}")
        return index

    tokenizer = build_tokenizer(cfg.tokenizer, cfg.data)
    digest = tokenizer_hash(tokenizer)
    if index is not None and index["tokenizer"]["hash"] != digest:
        raise ValueError(f"{out} holds tokens of another tokenizer ({index['tokenizer']['name']}, hash "
                         f"{index['tokenizer']['hash'][:12]}; this one: {digest[:12]}){hash_mismatch_hint(index)}: "
                         "one folder never mixes tokenizers; choose another --out")
    if index is None:
        name = (f"bpe-{cfg.tokenizer.vocab_size}-{Path(tokenizer.name_or_path).name}" if cfg.tokenizer.kind == "bpe"
                else str(cfg.tokenizer.name))
        index = {"format": FORMAT, "complete": False, "dtype": token_dtype(token_id_bound(tokenizer)).name,
                 "tokenizer": {"name": name, "hash": digest, "vocab_size": len(tokenizer),
                               "eos_token_id": tokenizer.eos_token_id, "tokenizers_version": tokenizers_version()},
                 "source": source, "settings": settings,
                 "splits": {split: _empty_split() for split in SPLITS}}
        out.mkdir(parents=True, exist_ok=True)
        _write_index(out, index)  # first: from here on a killed run is continued, whatever it was doing
    _save_tokenizer(tokenizer, out / TOKENIZER_DIR)

    workers = workers or os.cpu_count() or 1
    with _Encoder(out / TOKENIZER_DIR, index["tokenizer"]["name"], cfg.data, np.dtype(index["dtype"]),
                  workers) as encoder:
        for split in SPLITS:
            _write_split(cfg.data, split, out, index, encoder, shard_tokens, max_tokens[split])
    index["complete"] = True
    _write_index(out, index)
    return index


def _empty_split() -> dict:
    return {"shards": [], "num_tokens": 0, "num_documents": 0, "rows_read": 0, "skipped_empty": 0,
            "skipped_malformed": 0, "done": False}


def _existing_index(out: Path, source: dict, settings: dict) -> Optional[dict]:
    """The index of an earlier (maybe killed) run into ``out``, if it was made from the same settings. A folder with
    no index that holds only what a run killed before its first index leaves (a half-saved tokenizer, a half-written
    index) counts as new."""
    file = out / INDEX
    if not file.is_file():
        if out.is_dir() and not all(_leftover(entry) for entry in out.iterdir()):
            raise ValueError(f"{out} is not empty and holds no {INDEX}: choose a new or empty --out folder")
        return None
    index = json.loads(file.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{out}/{INDEX} has format {index.get('format')!r}, not {FORMAT!r}; choose another --out")
    for key, mine in (("source", source), ("settings", settings)):
        if index.get(key) != mine:
            raise ValueError(f"{out} was written from other {key} ({_first_difference(index.get(key), mine)}): a folder "
                             "holds one pretokenization; choose another --out or repeat the original command")
    return index


def _first_difference(old, new, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {old!r} there, {new!r} now"


def _leftover(entry: Path) -> bool:
    """Whether ``entry`` is a temporary file or folder of a killed run: one a new run may replace."""
    return (entry.name.startswith(_TMP_TOKENIZER) and entry.is_dir()) or entry.name == f".{INDEX}.tmp"


def _save_tokenizer(tokenizer, folder: Path) -> None:
    """Save into a temporary sibling, then rename: ``folder`` holds the whole tokenizer or does not exist. Removes
    the temporary folders of saves that were killed."""
    for entry in folder.parent.glob(f"{_TMP_TOKENIZER}*"):
        shutil.rmtree(entry, ignore_errors=True)
    if (folder / "tokenizer.json").is_file():
        return
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_TOKENIZER, dir=folder.parent))
    try:
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_index(out: Path, index: dict) -> None:
    tmp = out / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX)


def _write_split(data_cfg, split: str, out: Path, index: dict, encoder: "_Encoder", shard_tokens: int,
                 max_tokens: Optional[int]) -> None:
    from polycom.data.sources import text_stream

    record = index["splits"][split]
    if not record["done"] and max_tokens is not None and record["num_tokens"] >= max_tokens:
        # killed after the shard that reached the cap was recorded, before the split was marked done: it is done
        record["done"] = True
        _write_index(out, index)
    if record["done"]:
        return
    rows = iter(text_stream(data_cfg, split))
    if record["rows_read"]:
        log.info("%s: resuming after %s source rows (%d shards written)", split, f"{record['rows_read']:,}",
                 len(record["shards"]))
    texts = (row["text"] for row in islice(rows, record["rows_read"], None))
    pieces: List[np.ndarray] = []
    lengths: List[int] = []
    row = record["rows_read"]
    counts = {key: record[key] for key in ("skipped_empty", "skipped_malformed")}
    started, tokens_at_start = time.perf_counter(), record["num_tokens"]
    pending_tokens = 0  # in pieces, not yet written
    reported = started

    def flush() -> None:
        nonlocal pending_tokens
        shard = {"tokens": f"{split}-{len(record['shards']):05d}.bin",
                 "documents": f"{split}-{len(record['shards']):05d}.docs.npy",
                 "num_tokens": pending_tokens, "num_documents": len(lengths)}
        _write_aside(out / shard["tokens"], lambda f: np.concatenate(pieces).tofile(f))
        _write_aside(out / shard["documents"], lambda f: np.save(f, np.cumsum(lengths, dtype=np.int64)))
        record["shards"].append(shard)
        record["num_tokens"] += shard["num_tokens"]
        record["num_documents"] += shard["num_documents"]
        record.update(rows_read=row, **counts)
        _write_index(out, index)
        elapsed = time.perf_counter() - started
        log.info("%s: shard %d written (%s tokens, %s documents); %s tokens so far, %s tokens/s", split,
                 len(record["shards"]) - 1, f"{shard['num_tokens']:,}", f"{shard['num_documents']:,}",
                 f"{record['num_tokens']:,}", f"{(record['num_tokens'] - tokens_at_start) / max(elapsed, 1e-9):,.0f}")
        pieces.clear()
        lengths.clear()
        pending_tokens = 0

    for n, ids in _rows(encoder.map(texts)):
        row += 1
        if n < 0:
            counts["skipped_malformed"] += 1
            continue
        if n == 0:
            counts["skipped_empty"] += 1
            continue
        pieces.append(ids)
        lengths.append(n)
        pending_tokens += n
        if time.perf_counter() - reported > PROGRESS_SECONDS:
            reported = time.perf_counter()
            done = record["num_tokens"] + pending_tokens
            log.info("%s: %s tokens, %s tokens/s", split, f"{done:,}",
                     f"{(done - tokens_at_start) / (reported - started):,.0f}")
        if pending_tokens >= shard_tokens:
            flush()
        if max_tokens is not None and record["num_tokens"] + pending_tokens >= max_tokens:
            break
    if lengths:
        flush()
    if counts["skipped_malformed"]:
        log.warning("%s: skipped %d malformed rows (data.bad_rows=skip)", split, counts["skipped_malformed"])
    record.update(rows_read=row, done=True, **counts)
    _write_index(out, index)


def _rows(results: Iterator[Tuple[np.ndarray, np.ndarray]]) -> Iterator[Tuple[int, np.ndarray]]:
    """Per source row: its token count (-1 malformed, 0 empty) and its tokens."""
    for lengths, tokens in results:
        ends = np.cumsum(np.maximum(lengths, 0))
        for n, end in zip(lengths.tolist(), ends.tolist()):
            yield n, tokens[end - max(n, 0): end]


def _write_aside(path: Path, write) -> None:
    """Write through ``write(file)`` into a hidden sibling, then rename: a reader sees the whole file or none."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ tokenizing

def _init_worker(tokenizer_dir: str, name: str, text_field: str, bad_rows: str, dtype: str,
                 pooled: bool = True) -> None:
    if pooled:  # one thread per worker process: the processes are the parallelism
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from transformers import AutoTokenizer

    _WORKER.update(tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir), name=name, text_field=text_field,
                   bad_rows=bad_rows, dtype=np.dtype(dtype))


def _encode_chunk(values: list) -> Tuple[np.ndarray, np.ndarray]:
    """Per row its token count (-1: malformed, 0: empty), and all rows' tokens concatenated."""
    from polycom.data.packing import encode_documents

    encoded = encode_documents(values, _WORKER["tokenizer"], _WORKER["text_field"], _WORKER["bad_rows"])
    lengths = np.array([-1 if ids is None else len(ids) for ids in encoded], dtype=np.int64)
    kept = [ids for ids in encoded if ids]
    tokens = np.fromiter((t for ids in kept for t in ids), dtype=np.int64, count=int(lengths[lengths > 0].sum()))
    dtype = _WORKER["dtype"]
    if tokens.size and tokens.max() > np.iinfo(dtype).max:
        raise ValueError(f"tokenizer {_WORKER['name']} gave token id {tokens.max()}, which {dtype.name} (chosen from "
                         f"its vocabulary's largest id) cannot hold: its vocabulary does not list every id it gives")
    return lengths, tokens.astype(dtype)


class _Encoder:
    """Tokenizes chunks of rows in worker processes and gives the results back in order, with a bounded number of
    chunks in flight (``Pool.imap`` would read the whole source ahead into memory)."""

    def __init__(self, tokenizer_dir: Path, name: str, data_cfg, dtype: np.dtype, workers: int):
        self.args = (str(tokenizer_dir), name, data_cfg.text_field, data_cfg.bad_rows, dtype.name)
        self.workers = workers
        self.pool = None

    def __enter__(self) -> "_Encoder":
        if self.workers > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = multiprocessing.get_context(method).Pool(self.workers, _init_worker, self.args)
        else:
            _init_worker(*self.args, pooled=False)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def map(self, texts: Iterator) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        if self.pool is None:
            for chunk in _chunks(texts):
                yield _encode_chunk(chunk)
            return
        pending: deque = deque()
        for chunk in _chunks(texts):
            pending.append(self.pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _chunks(texts: Iterator) -> Iterator[list]:
    chunk, chars = [], 0
    for text in texts:
        chunk.append(text)
        chars += len(text) if isinstance(text, str) else 0
        if chars >= CHUNK_CHARS or len(chunk) >= CHUNK_ROWS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk

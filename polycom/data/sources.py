"""Text sources: every source is a streaming ``datasets.IterableDataset`` with one column, ``text``.

``hub`` and local parquet files go through the same ``datasets.load_dataset(..., streaming=True)`` call;
only the arguments differ (a Hub name, or the ``parquet`` builder with ``data_files``). Local json/jsonl and
txt files are read by :func:`polycom.data.rows.read_rows` in a generator dataset with one shard per file
(as the ``json``/``text`` builders have), so shuffling and ``split_dataset_by_node`` behave the same and
the rows of a clean file are the same, in the same order; unlike the builders, it can tell a malformed row
(file and line) and skip it. ``embedded`` is the corpus in :mod:`polycom.data.embedded`.

Malformed rows (``data.bad_rows``): with ``error`` a local one raises :class:`BadRowError` naming the file
and line (``validate_data_config`` finds it at startup already) and a Hub row whose text is not a string
raises ``TypeError`` naming ``data.text_field`` when it arrives. With ``skip`` such a row reaches the
consumer as ``{"text": None}`` (Hub: whatever non-string value it holds), so that the consumer, which knows
the stream's position and rank, skips and counts it (``PipelineStats.skipped_malformed``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Iterator, List

import datasets
from datasets.distributed import split_dataset_by_node

from polycom.data.config import builder_for, expand_files
from polycom.data.embedded import embedded_corpus
from polycom.data.rows import BadRow, json_line_range, read_rows, splittable_by_bytes

SPLITS = ("train", "validation")
_FEATURES = datasets.Features({"text": datasets.Value("string")})

log = logging.getLogger(__name__)


class BadRowError(ValueError, TypeError):
    """A malformed row met while streaming with ``data.bad_rows=error``. A ``TypeError`` too, as a
    non-string text value always was."""


def text_stream(cfg, split: str, pieces_per_file: int = 1) -> datasets.IterableDataset:
    """The ``train`` or ``validation`` documents of ``cfg`` (a ``DataConfig``), in source order.
    ``pieces_per_file > 1``: local JSON Lines files are read as that many byte ranges, one shard each.

    Without a validation split (hub) or validation files (local), ``validation`` is the fraction
    ``cfg.validation_fraction`` of the training documents chosen by ``is_held_out`` and ``train`` is the
    rest, so both are disjoint and the same on every run, machine and world size.

    With ``cfg.max_document_chars`` documents are cut into pieces (``split_document``); the validation pieces
    are then interleaved across documents (``_interleaved_pieces``).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    ds = _documents(cfg, split, pieces_per_file)
    if cfg.max_document_chars is None:
        return ds
    limit = cfg.max_document_chars
    if split == "validation":
        return datasets.IterableDataset.from_generator(
            _interleaved_pieces, features=_FEATURES, gen_kwargs={"documents": ds, "max_chars": limit})
    return ds.map(lambda batch: {"text": [piece for text in batch["text"] for piece in split_document(text, limit)]},
                  batched=True, batch_size=16)


VALIDATION_INTERLEAVE = 16  # documents whose pieces are interleaved in the validation stream


def _interleaved_pieces(documents: datasets.IterableDataset, max_chars: int) -> Iterator[dict]:
    """The pieces of the validation documents taken round-robin over groups of ``VALIDATION_INTERLEAVE``
    documents (first piece of each, then the second, ...), so a validation budget smaller than the split
    covers several documents (all seven held-out books of ``data=gutenberg``), not the first one only."""
    group: list = []
    for row in documents:
        group.append(split_document(row["text"], max_chars))
        if len(group) == VALIDATION_INTERLEAVE:
            yield from _round_robin(group)
            group = []
    yield from _round_robin(group)


def _round_robin(groups: list) -> Iterator[dict]:
    for i in range(max(map(len, groups), default=0)):
        for pieces in groups:
            if i < len(pieces):
                yield {"text": pieces[i]}


def split_document(text, max_chars: int) -> List:
    """``text`` cut into consecutive pieces of at most ``max_chars`` characters, at paragraph boundaries (a blank
    line) where possible, else at line breaks, else anywhere; the pieces joined again give ``text``. Non-strings
    (malformed rows) pass through unchanged for the consumer to count."""
    if not isinstance(text, str) or len(text) <= max_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = text.rfind("\n\n", start + 1, end)
        cut = cut + 2 if cut > start else text.rfind("\n", start + 1, end) + 1
        if cut <= start:
            cut = end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _documents(cfg, split: str, pieces_per_file: int = 1) -> datasets.IterableDataset:
    if cfg.source == "embedded":
        return embedded_corpus(split)
    if split == "validation" and _has_validation_data(cfg):
        return _load_split(cfg, "validation", pieces_per_file)
    train = _load_split(cfg, "train", pieces_per_file)
    if _has_validation_data(cfg) or cfg.validation_fraction == 0:
        if split == "validation":
            raise ValueError("data.validation_split/validation_files/validation_fraction: no validation data")
        return train
    want_held_out = split == "validation"

    def keep(row: dict) -> bool:
        text = row["text"]
        if not isinstance(text, str):
            require_text(text, cfg.text_field, cfg.bad_rows)  # raises unless bad_rows=skip
            return not want_held_out  # a malformed row stays in train, where it is skipped and counted
        return is_held_out(text, cfg.validation_fraction) == want_held_out

    return train.filter(keep)


def is_held_out(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out fraction: a stable hash of its text, not its position,
    so the choice does not depend on file order or sharding, and duplicates land on the same side."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def require_text(value, field: str, bad_rows: str = "error"):
    """``value`` if it is a document (a str). Otherwise raise a ``TypeError`` naming ``data.text_field``, or
    with ``bad_rows="skip"`` return None: the row is malformed and to be skipped."""
    if isinstance(value, str):
        return value
    if bad_rows == "skip":
        return None
    raise TypeError(f"data.text_field={field!r}: a document is {type(value).__name__}, not str: {value!r:.80}"
                    f"{' (the row lacks the field or it is null)' if value is None else ''}; "
                    "set data.bad_rows=skip to skip such rows")


def local_arguments(builder: str, files: List[str], sample_by: str = "document") -> dict:
    """``load_dataset`` arguments for local files; text files give one row per ``sample_by`` unit."""
    options = {"sample_by": sample_by} if builder == "text" else {}
    return {"path": builder, "data_files": files, "split": "train", **options}


def load_streaming(arguments: dict) -> datasets.IterableDataset:
    """The one place data is loaded, for the Hub and local files alike."""
    return datasets.load_dataset(**arguments, streaming=True)


def _has_validation_data(cfg) -> bool:
    return bool(cfg.validation_split) if cfg.source == "hub" else bool(cfg.validation_files)


def _load_split(cfg, split: str, pieces_per_file: int = 1) -> datasets.IterableDataset:
    if cfg.source == "hub":
        hub_split = cfg.train_split if split == "train" else cfg.validation_split
        arguments, field = {"path": cfg.name, "name": cfg.config_name, "split": hub_split}, cfg.text_field
    elif cfg.source == "local":
        key = "train_files" if split == "train" else "validation_files"
        files = expand_files(getattr(cfg, key), f"data.{key}")
        builder = builder_for(files[0], cfg.format)
        if builder != "parquet":
            return local_rows(files, builder, cfg, f"data.{key}", pieces_per_file)
        arguments, field = local_arguments(builder, files), cfg.text_field
    else:
        raise ValueError(f"data.source={cfg.source!r} is not one of embedded, local, hub")
    return _only_text(load_streaming(arguments), field)


def local_rows(files: List[str], builder: str, cfg, key: str, pieces_per_file: int = 1) -> datasets.IterableDataset:
    """The rows of local json/jsonl or txt ``files`` (one shard each) as a stream with a ``text`` column; with
    ``pieces_per_file > 1`` the JSON Lines files are split into that many byte ranges, one shard each (in order)."""
    pieces = [(path, 0, 1) for path in files]
    if pieces_per_file > 1 and builder == "json":
        pieces = [(path, i, pieces_per_file) if splittable_by_bytes(path) else (path, 0, 1 if i == 0 else 0)
                  for path in files for i in range(pieces_per_file)]
    return datasets.IterableDataset.from_generator(
        _generate_rows, features=_FEATURES,
        gen_kwargs={"pieces": pieces, "builder": builder, "field": cfg.text_field, "sample_by": cfg.sample_by,
                    "bad_rows": cfg.bad_rows, "key": key})


def _generate_rows(pieces: List[tuple], builder: str, field: str, sample_by: str, bad_rows: str,
                   key: str) -> Iterator[dict]:
    for path, piece, count in pieces:
        warned = False
        if count == 0:  # a file that cannot be split: read whole by its first piece
            continue
        rows = read_rows(path, builder, field, sample_by) if count == 1 else json_line_range(path, field, piece, count)
        for row in rows:
            if not isinstance(row, BadRow):
                yield {"text": row}
                continue
            if bad_rows != "skip":
                raise BadRowError(f"{key}: {row}; fix the file or set data.bad_rows=skip to skip such rows")
            if not warned:
                _warn_once(key, row)
                warned = True
            yield {"text": None}


_WARNED: set = set()  # files already warned about in this process: (path, size, mtime)


def _warn_once(key: str, row: BadRow) -> None:
    stat = os.stat(row.path)
    memo = (os.path.abspath(row.path), stat.st_size, stat.st_mtime_ns)
    if memo not in _WARNED:
        _WARNED.add(memo)
        log.warning("%s: skipping the malformed rows of %s (data.bad_rows=skip; counted as skipped_malformed); "
                    "the first: %s", key, row.path, row)


def _only_text(ds: datasets.IterableDataset, field: str) -> datasets.IterableDataset:
    ds = ds.select_columns([field])
    return ds if field == "text" else ds.rename_column(field, "text")


def train_stream(cfg, seed: int, rank: int = 0, world_size: int = 1) -> datasets.IterableDataset:
    """The training documents of one rank, in a seeded shuffle order (``set_epoch`` reshuffles). The ranks'
    documents are disjoint and together form the whole stream (``rank_part``)."""
    ds = text_stream(cfg, "train")
    if world_size > 1:
        ds = rank_part(cfg, ds, rank, world_size)
    return ds.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)


def rank_part(cfg, ds: datasets.IterableDataset, rank: int, world_size: int) -> datasets.IterableDataset:
    """The shards of ``ds`` that rank ``rank`` reads, so that no rank reads the others' data:

    - at least as many shards (files) as ranks: whole shards, rank r taking shards r, r + world, ... (when the
      number is not a multiple of the world size, some ranks get one shard more, so more data per epoch);
    - fewer: local JSON Lines files are split into ``world_size`` byte ranges each, one shard per range;
    - fewer, and no such files (Hub, parquet, txt, compressed files): every rank reads every document and keeps
      every ``world_size``-th (``split_dataset_by_node``), logged once with the way out.
    """
    shards = ds.n_shards
    if shards % world_size == 0:
        return split_dataset_by_node(ds, rank=rank, world_size=world_size)
    if shards > world_size:
        if rank == 0:
            log.info("data: %d shards over %d processes: whole shards each, %d processes read one shard more",
                     shards, world_size, shards % world_size)
        return ds.shard(num_shards=world_size, index=rank, contiguous=False)
    if _local_json_lines(cfg):
        return split_dataset_by_node(text_stream(cfg, "train", pieces_per_file=world_size), rank=rank,
                                     world_size=world_size)
    if rank == 0:
        log.warning("data: %d shard(s) for %d processes, and they cannot be split by rows: every process reads all of "
                    "the training data and keeps one document in %d; give at least %d files (or shards), or "
                    "pretokenize (data=tokens)", shards, world_size, world_size, world_size)
    return split_dataset_by_node(ds, rank=rank, world_size=world_size)


def _local_json_lines(cfg) -> bool:
    if cfg.source != "local":
        return False
    files = expand_files(cfg.train_files, "data.train_files")
    return builder_for(files[0], cfg.format) == "json" and any(splittable_by_bytes(path) for path in files)

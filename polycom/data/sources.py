"""Text sources: every source is a streaming ``datasets.IterableDataset`` with one column, ``text``.

``hub`` and ``local`` go through the same ``datasets.load_dataset(..., streaming=True)`` call; only the
arguments differ (a Hub name, or a builder ``json``/``text``/``parquet`` with ``data_files``).
``embedded`` is the corpus in :mod:`polycom.data.embedded`.
"""

from __future__ import annotations

import hashlib
from typing import List

import datasets
from datasets.distributed import split_dataset_by_node

from polycom.data.config import builder_for, expand_files
from polycom.data.embedded import embedded_corpus

SPLITS = ("train", "validation")


def text_stream(cfg, split: str) -> datasets.IterableDataset:
    """The ``train`` or ``validation`` documents of ``cfg`` (a ``DataConfig``), in source order.

    Without a validation split (hub) or validation files (local), ``validation`` is the fraction
    ``cfg.validation_fraction`` of the training documents chosen by ``is_held_out`` and ``train`` is the
    rest, so both are disjoint and the same on every run, machine and world size.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    if cfg.source == "embedded":
        return embedded_corpus(split)
    if split == "validation" and _has_validation_data(cfg):
        return _load_split(cfg, "validation")
    train = _load_split(cfg, "train")
    if _has_validation_data(cfg) or cfg.validation_fraction == 0:
        if split == "validation":
            raise ValueError("data.validation_split/validation_files/validation_fraction: no validation data")
        return train
    want_held_out = split == "validation"
    return train.filter(lambda row: is_held_out(require_text(row["text"], cfg.text_field),
                                                cfg.validation_fraction) == want_held_out)


def is_held_out(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out fraction: a stable hash of its text, not its position,
    so the choice does not depend on file order or sharding, and duplicates land on the same side."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def require_text(value, field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"data.text_field={field!r}: a document is {type(value).__name__}, not str: {value!r:.80}")
    return value


def local_arguments(builder: str, files: List[str], sample_by: str = "document") -> dict:
    """``load_dataset`` arguments for local files; text files give one row per ``sample_by`` unit."""
    options = {"sample_by": sample_by} if builder == "text" else {}
    return {"path": builder, "data_files": files, "split": "train", **options}


def load_streaming(arguments: dict) -> datasets.IterableDataset:
    """The one place data is loaded, for the Hub and local files alike."""
    return datasets.load_dataset(**arguments, streaming=True)


def _has_validation_data(cfg) -> bool:
    return bool(cfg.validation_split) if cfg.source == "hub" else bool(cfg.validation_files)


def _load_split(cfg, split: str) -> datasets.IterableDataset:
    if cfg.source == "hub":
        hub_split = cfg.train_split if split == "train" else cfg.validation_split
        arguments, field = {"path": cfg.name, "name": cfg.config_name, "split": hub_split}, cfg.text_field
    elif cfg.source == "local":
        key = "train_files" if split == "train" else "validation_files"
        files = expand_files(getattr(cfg, key), f"data.{key}")
        builder = builder_for(files[0], cfg.format)
        arguments = local_arguments(builder, files, cfg.sample_by)
        field = "text" if builder == "text" else cfg.text_field
    else:
        raise ValueError(f"data.source={cfg.source!r} is not one of embedded, local, hub")
    return _only_text(load_streaming(arguments), field)


def _only_text(ds: datasets.IterableDataset, field: str) -> datasets.IterableDataset:
    ds = ds.select_columns([field])
    return ds if field == "text" else ds.rename_column(field, "text")


def train_stream(cfg, seed: int, rank: int = 0, world_size: int = 1) -> datasets.IterableDataset:
    """The training documents of one rank, in a seeded shuffle order (``set_epoch`` reshuffles).

    ``split_dataset_by_node`` gives each rank whole shards (files) when their number is a multiple of
    ``world_size``, else every ``world_size``-th document; either way the ranks' documents are disjoint
    and together form the whole stream.
    """
    ds = text_stream(cfg, "train")
    if world_size > 1:
        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    return ds.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)

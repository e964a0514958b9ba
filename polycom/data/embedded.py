"""The embedded default corpus: text that exists on any machine with Python, no download needed.

What it is:
- every ``.py`` file of the running interpreter's standard library (``sysconfig.get_paths()["stdlib"]``),
  excluding folders named ``test``, ``tests``, ``idle_test`` (IDLE's test data), ``site-packages``,
  ``dist-packages`` and ``__pycache__``, and ``pydoc_data/`` (its only module is the next item as code);
  one document per file, sorted by relative path;
- the pydoc documentation topics (``pydoc_data.topics.topics``, the language reference prose that
  ``help()`` shows), one document per topic, sorted by name, after the files. They are training data only.

Size on CPython 3.11.7: 732 files with 11.36 M characters, plus 79 topics with 0.46 M characters.
Validation is 36 files (4.9%) with 0.42 M characters (about 105k tokens with the default 8k BPE);
training is the other 696 files and the topics, 11.41 M characters (about 2.9 M tokens).
The corpus differs slightly between Python versions (modules are added and removed), so runs are
comparable only on the same version; ``embedded_documents`` lists exactly which documents are used.

Train/validation split: files are ranked by a stable hash (SHA-256) of their relative path and validation
takes them in that order until it holds at least 2% of the files and 400,000 characters (enough for the
default ``eval.val_tokens``). The choice depends only on the file names and sizes, so it is the same on
every run and machine of one Python version.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sysconfig
from pathlib import Path
from typing import Iterator, List

import datasets

EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                           "pydoc_data"})
VALIDATION_FILE_FRACTION = 0.02
VALIDATION_MIN_CHARS = 400_000  # ~100k tokens with an 8k BPE: room for the default eval.val_tokens (65,536)
_TOPIC_PREFIX = "pydoc_data.topics:"
_FEATURES = datasets.Features({"text": datasets.Value("string")})


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple:
    """Relative POSIX paths of the corpus's ``.py`` files, sorted."""
    root = stdlib_root()
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in EXCLUDED_DIRS]  # never walk site-packages
        files += [(Path(folder) / n).relative_to(root).as_posix() for n in names if n.endswith(".py")]
    return tuple(sorted(files))


@functools.lru_cache(maxsize=1)
def validation_files() -> frozenset:
    files = stdlib_files()
    ranked = sorted(files, key=lambda rel: hashlib.sha256(rel.encode()).hexdigest())
    min_files = math.ceil(VALIDATION_FILE_FRACTION * len(files))
    chosen, chars = [], 0
    for rel in ranked:
        if len(chosen) >= min_files and chars >= VALIDATION_MIN_CHARS:
            break
        chosen.append(rel)
        chars += len(read_document(rel))
    return frozenset(chosen)


def embedded_documents(split: str) -> List[str]:
    """Document ids of a split: relative stdlib paths, then ``pydoc_data.topics:<topic>`` (train only)."""
    held_out = validation_files()
    if split == "validation":
        return [rel for rel in stdlib_files() if rel in held_out]
    if split == "train":
        from pydoc_data.topics import topics

        return [rel for rel in stdlib_files() if rel not in held_out] + [_TOPIC_PREFIX + t for t in sorted(topics)]
    raise ValueError(f"split={split!r} is not one of train, validation")


def read_document(doc_id: str) -> str:
    if doc_id.startswith(_TOPIC_PREFIX):
        from pydoc_data.topics import topics

        return topics[doc_id[len(_TOPIC_PREFIX):]]
    return (stdlib_root() / doc_id).read_text(encoding="utf-8", errors="replace")


def embedded_corpus(split: str) -> datasets.IterableDataset:
    """The split as a streaming dataset with a ``text`` column; one shard per document, so that
    ``split_dataset_by_node`` and ``shuffle`` distribute and reorder whole files."""
    return datasets.IterableDataset.from_generator(
        _generate, gen_kwargs={"doc_ids": embedded_documents(split)}, features=_FEATURES)


def _generate(doc_ids: List[str]) -> Iterator[dict]:
    for doc_id in doc_ids:
        yield {"text": read_document(doc_id)}

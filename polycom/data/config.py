"""Schema of the ``data:`` and ``tokenizer:`` config groups, and the checks run before anything is built.

The dataclasses are the Hydra structured-config schema (``polycom.train.config`` nests them), so a
misspelled key or a wrong type fails at composition. ``validate_data_config`` checks what types cannot:
that the source exists, the files match and are non-empty, and the text field is there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from glob import glob
from typing import List, Optional

SOURCES = ("embedded", "local", "hub")
FORMATS = ("auto", "json", "text", "parquet")
SAMPLE_BY = ("document", "paragraph", "line")
_BUILDER_BY_ENDING = {".jsonl": "json", ".json": "json", ".txt": "text", ".text": "text", ".parquet": "parquet"}
_COMPRESSION_ENDINGS = (".gz", ".bz2", ".xz", ".zst")


@dataclass
class DataConfig:
    source: str = "embedded"  # embedded | local | hub
    name: Optional[str] = None  # Hub dataset name (source=hub)
    config_name: Optional[str] = None  # Hub dataset configuration, e.g. "sample-10BT"
    train_split: str = "train"
    validation_split: Optional[str] = "validation"  # hub: null when the dataset has none
    train_files: List[str] = field(default_factory=list)  # glob patterns (source=local)
    validation_files: List[str] = field(default_factory=list)
    format: str = "auto"  # auto (by file ending) | json | text | parquet
    text_field: str = "text"  # json/parquet field holding the document (text files: the text itself)
    sample_by: str = "document"  # text files: one document per file | paragraph | line
    # Without a validation split/files: hold out this fraction of documents, chosen by a hash of their text.
    validation_fraction: float = 0.0
    shuffle_buffer: int = 10000  # documents
    tokenize_batch_size: int = 256  # documents per tokenizer call


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # bpe (trained on the training data, cached) | pretrained
    name: Optional[str] = None  # pretrained: Hub name or local folder
    vocab_size: int = 8192  # bpe
    train_chars: int = 20_000_000  # bpe: characters of the training stream to train on
    cache_dir: str = ".cache/tokenizers"  # bpe: trained tokenizers, one folder per fingerprint


def builder_for(path: str, fmt: str) -> str:
    """The ``datasets`` builder (json | text | parquet) for a file, from ``fmt`` or, for "auto", its ending."""
    if fmt != "auto":
        return fmt
    stem = path
    for ending in _COMPRESSION_ENDINGS:
        if stem.endswith(ending):
            stem = stem[: -len(ending)]
    ext = os.path.splitext(stem)[1].lower()
    if ext not in _BUILDER_BY_ENDING:
        raise ValueError(f"data.format='auto' cannot infer a format from {path!r} (known endings: "
                         f"{', '.join(_BUILDER_BY_ENDING)}); set data.format to json, text or parquet")
    return _BUILDER_BY_ENDING[ext]


def expand_files(patterns, key: str) -> List[str]:
    """Sorted files matching the glob ``patterns`` of config key ``key``; every pattern must match a file."""
    files = set()
    for pattern in patterns:
        if _starts_with_null(pattern):
            raise ValueError(f"{key}: {pattern!r} starts with an unset directory (paths.data_dir is null): "
                             "set POLYCOM_DATA_DIR to the shared data folder (../shared/data)")
        matched = [path for path in glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(path)]
        if not matched:
            raise ValueError(f"{key}: no file matches {pattern!r}")
        files.update(matched)
    return sorted(files)


def _starts_with_null(pattern: str) -> bool:
    """An interpolation like ``${paths.data_dir}/x`` with a null directory resolves to ``None/x``."""
    return pattern.split("/", 1)[0] in ("None", "null")


def validate_data_config(cfg) -> None:
    """Raise ``ValueError`` naming the config key for any problem found before a model is built."""
    if cfg.source not in SOURCES:
        raise ValueError(f"data.source={cfg.source!r} is not one of {', '.join(SOURCES)}")
    if not 0.0 <= cfg.validation_fraction < 1.0:
        raise ValueError(f"data.validation_fraction={cfg.validation_fraction} must be in [0, 1)")
    if cfg.shuffle_buffer < 1:
        raise ValueError(f"data.shuffle_buffer={cfg.shuffle_buffer} must be >= 1")
    if cfg.tokenize_batch_size < 1:
        raise ValueError(f"data.tokenize_batch_size={cfg.tokenize_batch_size} must be >= 1")
    if cfg.sample_by not in SAMPLE_BY:
        raise ValueError(f"data.sample_by={cfg.sample_by!r} is not one of {', '.join(SAMPLE_BY)}")
    if cfg.source == "hub":
        if not cfg.name:
            raise ValueError("data.name must name a Hub dataset when data.source='hub'")
        _check_one_validation_source(cfg, "validation_split", cfg.validation_split)
    if cfg.source == "local":
        _validate_local(cfg)


def _check_one_validation_source(cfg, key: str, value) -> None:
    """Validation data comes from exactly one place: the split/files, or a held-out fraction of train."""
    if value and cfg.validation_fraction > 0:
        raise ValueError(f"data.validation_fraction={cfg.validation_fraction} would be ignored because "
                         f"data.{key}={value!r} is set; set only one of them")
    if not value and cfg.validation_fraction == 0:
        raise ValueError(f"data.{key} is empty and data.validation_fraction is 0: there is no validation data; "
                         "set one of them")


def _validate_local(cfg) -> None:
    if cfg.format not in FORMATS:
        raise ValueError(f"data.format={cfg.format!r} is not one of {', '.join(FORMATS)}")
    if not cfg.train_files:
        raise ValueError("data.train_files is empty: give glob patterns of the training files")
    _check_one_validation_source(cfg, "validation_files", list(cfg.validation_files))
    for key in ("train_files", "validation_files"):
        files = expand_files(getattr(cfg, key), f"data.{key}")
        builders = {builder_for(f, cfg.format) for f in files}
        if len(builders) > 1:
            raise ValueError(f"data.{key} mixes formats {sorted(builders)}; use one format per split")
        for f in files:
            if os.path.getsize(f) == 0:
                raise ValueError(f"data.{key}: {f} is empty")
        if files:
            _check_text_field(files[0], builders.pop(), cfg, f"data.{key}")


def _check_text_field(path: str, builder: str, cfg, key: str) -> None:
    """Read the first record of ``path`` with the same loader training will use."""
    from polycom.data.sources import load_streaming, local_arguments

    first = next(iter(load_streaming(local_arguments(builder, [path], cfg.sample_by))), None)
    if first is None:
        raise ValueError(f"{key}: {path} holds no documents")
    field_name = "text" if builder == "text" else cfg.text_field
    if field_name not in first:
        raise ValueError(f"data.text_field={cfg.text_field!r} not found in {path} "
                         f"(fields: {', '.join(first)})")

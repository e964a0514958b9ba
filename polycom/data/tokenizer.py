"""Tokenizers: a byte-level BPE trained on the training data and cached, or a pretrained one.

Every tokenizer is loaded from a folder with ``AutoTokenizer.from_pretrained`` (a freshly trained BPE too,
after saving it), so a first run and a later run use exactly the same object. Building one by hand with
``GPT2Tokenizer(vocab_file=...)`` silently gives an empty tokenizer in transformers 5.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import List

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from polycom.data.sources import require_text, text_stream

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
KINDS = ("bpe", "pretrained")
# Part of the cache fingerprint: bump it when train_bpe changes, so old cached tokenizers are not reused.
_BPE_RECIPE = "byte-level-bpe-v1"


def build_tokenizer(tok_cfg, data_cfg) -> PreTrainedTokenizerFast:
    if data_cfg.source == "tokens":  # the tokenizer saved with the pretokenized data
        from polycom.data.tokens import load_tokenizer

        return load_tokenizer(data_cfg, tok_cfg)
    if tok_cfg.kind == "bpe":
        return _cached_bpe(tok_cfg, data_cfg)
    if tok_cfg.kind == "pretrained":
        return _pretrained(tok_cfg.name)
    raise ValueError(f"tokenizer.kind={tok_cfg.kind!r} is not one of {', '.join(KINDS)}")


def padded_vocab_size(tokenizer, multiple: int = 64) -> int:
    """The model's vocabulary: ``len(tokenizer)`` rounded up to a multiple of ``multiple`` (fast matmuls)."""
    return math.ceil(len(tokenizer) / multiple) * multiple


def training_sample(data_cfg, num_chars: int) -> List[str]:
    """The first ``num_chars`` characters of the training documents, in source order (unshuffled)."""
    sample, total = [], 0
    for row in text_stream(data_cfg, "train"):
        if total >= num_chars:
            break
        text = require_text(row["text"], data_cfg.text_field, data_cfg.bad_rows)
        if text is None:  # a malformed row, skipped (bad_rows=skip)
            continue
        text = text[: num_chars - total]
        sample.append(text)
        total += len(text)
    return sample


def train_bpe(texts: List[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style, no prefix space) with ``<|endoftext|>`` as eos, bos, unk and pad."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=EOS)


def bpe_fingerprint(sample: List[str], vocab_size: int) -> str:
    """Hash of the training sample and the settings: the cache folder's name."""
    digest = hashlib.sha256(json.dumps({"recipe": _BPE_RECIPE, "vocab_size": vocab_size, "eos": EOS}).encode())
    for text in sample:
        encoded = text.encode("utf-8", errors="surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:16]


def _cached_bpe(tok_cfg, data_cfg) -> PreTrainedTokenizerFast:
    sample = training_sample(data_cfg, tok_cfg.train_chars)
    if not any(text.strip() for text in sample):
        raise ValueError("tokenizer: the training documents hold no text to train the BPE on (data.train_files)")
    folder = Path(tok_cfg.cache_dir) / bpe_fingerprint(sample, tok_cfg.vocab_size)
    if not (folder / "tokenizer.json").is_file():
        log.info("training a %d-token BPE on %s characters -> %s", tok_cfg.vocab_size,
                 f"{sum(map(len, sample)):,}", folder)
        tokenizer = train_bpe(sample, tok_cfg.vocab_size)
        info = {"recipe": _BPE_RECIPE, "vocab_size": tok_cfg.vocab_size, "sample_chars": sum(map(len, sample)),
                "sample_documents": len(sample), "source": data_cfg.source}
        _save_atomically(tokenizer, info, folder)
    return AutoTokenizer.from_pretrained(folder)


def _save_atomically(tokenizer, info: dict, folder: Path) -> None:
    """Save into a temporary sibling folder, then rename it: a reader sees a complete folder or none.
    When two processes race, the first rename wins and the other's identical copy is discarded."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tokenizer.save_pretrained(tmp)
        (tmp / "polycom_bpe.json").write_text(json.dumps(info, indent=2))
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "tokenizer.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pretrained(name) -> PreTrainedTokenizerFast:
    if not name:
        raise ValueError("tokenizer.name must be a Hub name or a local folder when tokenizer.kind='pretrained'")
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.eos_token is None:
        log.warning("tokenizer %s has no eos token; adding %s (documents are separated by it)", name, EOS)
        tokenizer.add_special_tokens({"eos_token": EOS})
    return tokenizer

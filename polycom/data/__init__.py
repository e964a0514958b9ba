"""Data pipeline: text sources (Hub / local files / embedded), tokenizers, and packed token blocks."""

from polycom.data.config import DataConfig, TokenizerConfig, validate_data_config
from polycom.data.embedded import embedded_corpus, embedded_documents
from polycom.data.packing import (
    BlockStream,
    PipelineStats,
    batched,
    pack,
    tokenize_stream,
    train_blocks,
    validation_blocks,
)
from polycom.data.sources import BadRowError, is_held_out, text_stream, train_stream
from polycom.data.tokenizer import EOS, build_tokenizer, padded_vocab_size, train_bpe

__all__ = [
    "DataConfig", "TokenizerConfig", "validate_data_config",
    "embedded_corpus", "embedded_documents",
    "BlockStream", "PipelineStats", "batched", "pack", "tokenize_stream", "train_blocks", "validation_blocks",
    "BadRowError", "is_held_out", "text_stream", "train_stream",
    "EOS", "build_tokenizer", "padded_vocab_size", "train_bpe",
]

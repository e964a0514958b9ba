"""Compose a training config and build its model: the one way the trainer, scripts, benchmarks and tests do it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from polycom.model import PolyComConfig, PolyComForCausalLM

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """``configs/train.yaml`` with ``overrides``, as ``train.py`` composes it (outside a Hydra app)."""
    from hydra import compose, initialize_config_dir

    from polycom.train.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)


def model_config(cfg, tokenizer=None, vocab_size: int | None = None, **fields) -> PolyComConfig:
    """The model config of a training config; the vocabulary and token ids come from ``tokenizer`` (padded to a
    multiple of 64), or ``vocab_size`` is given (parameter counts, benchmarks)."""
    if tokenizer is not None:
        from polycom.data import padded_vocab_size

        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        fields = {"vocab_size": padded_vocab_size(tokenizer), "eos_token_id": eos, "bos_token_id": eos,
                  "pad_token_id": pad, **fields}
    elif vocab_size is not None:
        fields = {"vocab_size": vocab_size, **fields}
    fields = {"document_mask": bool(cfg.data.get("document_mask", False)), **fields}
    return PolyComConfig.from_schema(cfg.model, cfg.activation, **fields)


def build_model(cfg, tokenizer=None, vocab_size: int | None = None, **fields) -> PolyComForCausalLM:
    """The model of a training config, with the config's ``trainer.activation_checkpointing``."""
    model = PolyComForCausalLM(model_config(cfg, tokenizer, vocab_size, **fields))
    model.set_activation_checkpointing(cfg.trainer.activation_checkpointing)
    return model

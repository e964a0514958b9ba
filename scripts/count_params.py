"""Print a markdown table of every model config's parameter counts per activation (built on the meta device).

    python scripts/count_params.py [--vocab 8192] [--activations swiglu,polynorm]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from polycom.model.activations import ACTIVATIONS
from polycom.model import PolyComConfig, PolyComForCausalLM
from polycom.train.config import register_schema

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def build_config(model_name: str, activation: str, vocab_size: int) -> PolyComConfig:
    register_schema()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}"])
    return PolyComConfig.matched(**OmegaConf.to_container(cfg.model, resolve=True), activation=activation, vocab_size=vocab_size)


def count(config: PolyComConfig) -> tuple[int, int]:
    """(total, active) parameters; active differs from total only for MoE models."""
    with torch.device("meta"):
        model = PolyComForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    if config.is_moe:
        from polycom.model.moe import count_active_parameters

        return total, count_active_parameters(model)
    return total, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--activations", default="swiglu,gelu,polynorm")
    args = parser.parse_args()
    activations = args.activations.split(",")
    for name in activations:
        if name not in ACTIVATIONS:
            parser.error(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    print(f"| model (vocab {args.vocab}) | d / layers / heads | " + " | ".join(f"{a} (FFN width)" for a in activations) + " |")
    print("|---|---|" + "---|" * len(activations))
    for path in sorted(CONFIGS.glob("model/*.yaml")):
        cells = []
        for act in activations:
            cfg = build_config(path.stem, act, args.vocab)
            total, active = count(cfg)
            width = cfg.moe_intermediate_size if cfg.is_moe else cfg.intermediate_size
            size = f"{total / 1e6:,.2f}M" + (f" ({active / 1e6:,.2f}M active)" if active != total else "")
            cells.append(f"{size} ({width})")
        print(f"| `{path.stem}` | {cfg.hidden_size} / {cfg.num_hidden_layers} / {cfg.num_attention_heads} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

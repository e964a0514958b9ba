"""Print a markdown table of every model config's parameter counts per activation (built on the meta device).

    python scripts/count_params.py [--vocab 8192] [--activations swiglu,polynorm]
"""

from __future__ import annotations

import argparse

import torch

from polycom.model import PolyComConfig, PolyComForCausalLM
from polycom.model.activations import ACTIVATIONS
from polycom.model.stats import count_parameters
from polycom.train.build import CONFIGS, compose_config, model_config


def build_config(model_name: str, activation: str, vocab_size: int) -> PolyComConfig:
    return model_config(compose_config([f"model={model_name}", f"activation={activation}"]), vocab_size=vocab_size)


def count(config: PolyComConfig) -> tuple[int, int]:
    """(total, active) parameters; active differs from total only for MoE models."""
    with torch.device("meta"):
        counts = count_parameters(PolyComForCausalLM(config))
    return counts.total, counts.active


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

"""FLOPs per token and model FLOPs utilisation (MFU). Placeholder until the benchmark suite lands."""

from __future__ import annotations

import torch


def model_flops_per_token(num_matmul_params: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """6·N + 12·L·d·T (PaLM appendix B): N the parameters used in matmuls, plus causal attention scores."""
    return 6.0 * num_matmul_params + 12.0 * num_layers * hidden_size * seq_len


def device_peak_flops(device) -> float | None:
    if torch.device(device).type == "cuda":
        return None
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    return tokens_per_s * flops_per_token / peak

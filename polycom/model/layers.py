"""Transformer building blocks: RMSNorm, rotary embeddings, causal self-attention, dense FFN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .activations import get_activation
from .config import PolyComConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Computes the RoPE (cos, sin) tables for given positions, shared by all layers.

    The inverse frequencies are recomputed on each call (head_dim / 2 numbers) rather than kept in a
    buffer: a non-persistent buffer is left uninitialized when transformers builds the model on the
    meta device in ``from_pretrained``.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids: (batch, seq) -> cos, sin: (batch, 1, seq, head_dim)
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=position_ids.device) / self.head_dim
        inv_freq = 1.0 / (self.theta**exponents)
        freqs = position_ids[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention through ``F.scaled_dot_product_attention``, with an optional KV cache.

    Q, K and V come from one fused projection (one matmul instead of three). ``qk_norm`` applies RMSNorm
    to the full query and key projections before splitting heads, as OLMoE does.
    """

    def __init__(self, config: PolyComConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        d = config.hidden_size
        self.qkv_proj = nn.Linear(d, 3 * d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.o_proj.is_residual_projection = True
        self.q_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None

    def forward(self, x, cos, sin, attn_mask=None, is_causal=True, cache=None):
        batch, seq, d = x.shape
        q, k, v = self.qkv_proj(x).split(d, dim=-1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None)
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, d))


class FeedForward(nn.Module):
    """``W2 act(W1 x)``, or ``W2 (act(Wg x) * Wu x)`` for gated activations (one fused Wg|Wu matmul). No biases."""

    def __init__(self, config: PolyComConfig, hidden: int | None = None):
        super().__init__()
        spec = get_activation(config.activation)
        self.gated = spec.gated
        hidden = hidden or config.intermediate_size
        self.up_proj = nn.Linear(config.hidden_size, (2 if self.gated else 1) * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, config.hidden_size, bias=False)
        self.down_proj.is_residual_projection = True
        self.act = build_activation(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up_proj(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(h))


def build_activation(config: PolyComConfig) -> nn.Module:
    return get_activation(config.activation).build(config.activation_order, config.polycom_eps)

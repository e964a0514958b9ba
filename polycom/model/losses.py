"""Next-token cross-entropy over a large vocabulary without fp32 copies of the whole logits.

``F.cross_entropy(logits.float(), ...)`` on bf16 logits (B·T, V) materialises an fp32 copy of them, keeps an
fp32 log-softmax of the same size for backward, and backward builds two more fp32 tensors of that size before
casting the gradient back: at 16 x 4096 tokens and a 50k vocabulary each fp32 copy is 13 GB.
``chunked_cross_entropy`` upcasts one chunk of rows at a time (``CHUNK_ELEMENTS`` logits, 256 MiB in fp32; one
temporary per chunk) and keeps only one fp32 number per row (its log-sum-exp) for backward, which recomputes the
softmax chunk by chunk and writes the gradient straight into one tensor of the logits' dtype. The arithmetic is
fp32 (fp64 for fp64 logits) whatever the logits' dtype, as before; values and gradients equal torch's to rounding.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 26  # logits upcast at a time (forward and backward): 64M, 256 MiB in fp32


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


def _row_chunks(rows: int, vocab: int, chunk_elements: int):
    step = max(1, chunk_elements // max(vocab, 1))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _logsumexp_(chunk: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp of ``chunk`` (overwritten): one temporary, where ``torch.logsumexp`` makes two."""
    top = chunk.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # rows of -inf / inf: as torch.logsumexp
    return chunk.sub_(top).exp_().sum(dim=-1).log_().add_(top.squeeze(-1))


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Per-row losses ``logsumexp(logits[i]) - logits[i, targets[i]]`` (0 where ``targets[i] == ignore_index``)
    for 2-D logits; saves the logits themselves (no copy), the targets and one log-sum-exp per row."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, chunk_elements: int):
        dtype = _compute_dtype(logits)
        rows, vocab = logits.shape
        lse = torch.empty(rows, dtype=dtype, device=logits.device)
        for start, end in _row_chunks(rows, vocab, chunk_elements):
            lse[start:end] = _logsumexp_(logits[start:end].to(dtype, copy=True))
        valid = targets != ignore_index
        safe = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(-1)  # a real column to gather
        picked = logits.gather(-1, safe).squeeze(-1).to(dtype)
        losses = torch.where(valid, lse - picked, torch.zeros_like(lse))
        ctx.save_for_backward(logits, safe, valid, lse)
        ctx.chunk_elements = chunk_elements
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        logits, safe, valid, lse = ctx.saved_tensors
        dtype = lse.dtype
        g = torch.where(valid, grad_losses.to(dtype), torch.zeros_like(lse)).unsqueeze(-1)  # (rows, 1)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        for start, end in _row_chunks(*logits.shape, ctx.chunk_elements):
            # d loss_i / d logits_ij = g_i * (softmax_ij - [j == target_i])
            p = logits[start:end].to(dtype, copy=True).sub_(lse[start:end, None]).exp_().mul_(g[start:end])
            p.scatter_add_(-1, safe[start:end], -g[start:end])
            grad[start:end].copy_(p)
        return grad, None, None, None


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                          reduction: str = "mean", chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets, ignore_index=..., reduction=...)`` for logits (N, V) and
    targets (N,), in fp32 (fp64 for fp64 logits), upcasting ``chunk_elements`` logits at a time; ``reduction``
    is "mean" (over the targets not ignored; NaN when all are, as in torch), "sum" or "none"."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    losses = _ChunkedCrossEntropy.apply(logits, targets, ignore_index, chunk_elements)
    if reduction == "none":
        return losses
    total = losses.sum()
    return total if reduction == "sum" else total / (targets != ignore_index).sum()

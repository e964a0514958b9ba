"""Activation checkpointing: what a decoder layer keeps for backward in training (``trainer.activation_checkpointing``,
``PolyComPreTrainedModel.set_activation_checkpointing``).

- ``none``: everything autograd saves.
- ``activation``: PolyCom's choice, generalised. The official code wraps the polynomial in
  ``torch.utils.checkpoint`` so that x^2, x^3 and the norms are not kept; this project's PolyNorm/PolyReLU autograd
  functions already keep only their input, so wrapping them alone would save nothing. What is left to drop is the
  activation's *output* (kept by the down projection for its weight gradient, the size of the FFN hidden layer)
  and the other elementwise results around it. Each layer's FFN block (its input norm, the FFN or MoE) therefore
  runs under selective checkpointing (``create_selective_checkpoint_contexts``): outputs of matmuls
  (``mm``, ``grouped_mm``) and of the routing choices (``topk``, ``sort``) are kept, every other op of the block --
  the norm, the activation and its gating product, dtype casts, the MoE's token gather and weighting -- is
  recomputed in backward from the block's input and the kept matmul outputs. No matmul runs twice.
- ``full``: each decoder layer keeps only its input and recomputes its forward in backward (matmuls and attention
  included; the checkpoint stops once the tensors backward needs are back, so a dense layer's down projection, whose
  output nothing keeps, is not rerun): transformers' gradient checkpointing, also what
  ``model.gradient_checkpointing_enable()`` turns on.

All modes use non-reentrant ``torch.utils.checkpoint`` (it composes with ``torch.compile``, DDP and FSDP2, and with
the custom autograd functions of the activations). Memory per mode: ``scripts/estimate_memory.py``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

CHECKPOINTING_MODES = ("none", "activation", "full")

# ops whose outputs "activation" keeps (any overload): every op that costs a matmul -- polycom::grouped_mm is the MoE's
# grouped_mm while Dynamo traces non-bf16 inputs (polycom.model.moe) -- and the routing decisions of an MoE
_KEPT_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::_grouped_mm", "polycom::grouped_mm",
    "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::topk", "aten::sort",
})


def _keep_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op._schema.name in _KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_recomputing_elementwise(function, *args):
    """``function(*args)`` keeping only the outputs of matmuls and routing choices for backward (mode "activation")."""
    return checkpoint(function, *args, use_reentrant=False,
                      context_fn=partial(create_selective_checkpoint_contexts, _keep_matmuls))


def checkpoint_layer(function, *args, **kwargs):
    """Mode "full": one decoder layer recomputed in backward from its input."""
    return checkpoint(function, *args, use_reentrant=False, **kwargs)

"""AdamW with parameter groups: no weight decay on norms, biases and PolyCom coefficients."""

from __future__ import annotations

import torch
from torch import nn


def no_decay_parameter_names(model: nn.Module, embedding_weight_decay: bool) -> set[str]:
    """Names of parameters excluded from weight decay.

    Excluded: every parameter with fewer than 2 dimensions (norm gains, biases), every parameter a module
    lists in ``no_weight_decay_params`` (the PolyCom coefficients), and, unless ``embedding_weight_decay``,
    the token embeddings and an untied output head.
    """
    names = {name for name, p in model.named_parameters() if p.ndim < 2}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for param_name in getattr(module, "no_weight_decay_params", ()):
            names.add(prefix + param_name)
        if not embedding_weight_decay and isinstance(module, nn.Embedding):
            names.add(prefix + "weight")
    if not embedding_weight_decay and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
        for name, p in model.named_parameters():
            if head is not None and p is head.weight:
                names.add(name)
    return names


def build_optimizer(model: nn.Module, optim_cfg) -> torch.optim.AdamW:
    no_decay = no_decay_parameter_names(model, optim_cfg.embedding_weight_decay)
    decay_params, other_params = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (other_params if name in no_decay else decay_params).append(p)
    groups = [
        {"params": decay_params, "weight_decay": optim_cfg.weight_decay, "name": "decay"},
        {"params": other_params, "weight_decay": 0.0, "name": "no_decay"},
    ]
    kwargs = {} if optim_cfg.fused is None else {"fused": optim_cfg.fused}
    return torch.optim.AdamW(
        groups, lr=optim_cfg.lr, betas=(optim_cfg.beta1, optim_cfg.beta2), eps=optim_cfg.eps, **kwargs
    )

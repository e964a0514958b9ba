"""The numbers a model owns: parameter counts, training FLOPs per token, and the values it reports while training
(PolyCom coefficients, MoE expert load). Everything outside the model asks here instead of inspecting modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .moe import MoEFeedForward


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    active: int  # used per token: non-expert parameters + k/E of the expert parameters (= total if dense)
    expert: int  # expert weights (and per-expert PolyCom coefficients), over all experts
    embedding: int  # the input embedding table
    matmul: int  # active parameters that take part in a matmul for each token (for FLOPs): active - input embedding,
    #              unless the embedding is tied to the output head (then the shared matrix counts once, as the head)

    @property
    def non_expert(self) -> int:
        return self.total - self.expert

    def as_summary(self) -> dict:
        """The ``num_params*`` fields of a run's summary."""
        return {"num_params": self.total, "num_params_active": self.active, "num_params_embedding": self.embedding,
                "num_params_matmul": self.matmul}


def _expert_parameters(module: MoEFeedForward) -> list[nn.Parameter]:
    params = [module.up_proj, module.down_proj]
    if module.per_expert_act:
        params += list(module.act.parameters())
    return params


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Works on the meta device; shared (tied) parameters count once."""
    total = sum(p.numel() for p in model.parameters())
    expert = active_expert = 0
    for module in model.modules():
        if isinstance(module, MoEFeedForward):
            n = sum(p.numel() for p in _expert_parameters(module))
            expert += n
            active_expert += n // module.num_experts * module.top_k  # every expert has the same size
    active = total - expert + active_expert
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embedding = embed.weight.numel() if embed is not None else 0
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    return ParameterCounts(total=total, active=active, expert=expert, embedding=embedding,
                           matmul=active - (0 if tied else embedding))


def model_flops_per_token(num_params: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """Training FLOPs per token: ``6·N + 12·L·d·T`` (PaLM, Chowdhery et al. 2022, appendix B).

    ``N`` (``num_params``) is the number of parameters in a matmul for each token (``ParameterCounts.matmul``):
    the active ones, without the input embedding (a lookup), with the LM head (a matmul). Norm gains and PolyCom
    coefficients are left in (< 0.1% of N). 6·N = 2 (multiply-add) x 3 (forward, and backward for inputs and
    weights). ``12·L·d·T`` is self-attention: per token and layer, QK^T and attention-times-V each cost 2·T·d
    forward, x3 for training, over the full sequence (no halving for the causal mask, as in PaLM), so MFU is
    comparable with PaLM/Megatron/nanoGPT numbers.
    """
    return 6.0 * num_params + 12.0 * num_layers * hidden_size * seq_len


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    config = model.config
    return model_flops_per_token(count_parameters(model).matmul, config.num_hidden_layers, config.hidden_size,
                                 seq_len)


def activation_values(model: nn.Module) -> dict:
    """What the activations report (``log_values``: PolyCom's coefficients), keyed ``polycom/layer<i>/<name>``.

    Under FSDP this gathers the sharded coefficients (collectives): every process calls it at the same steps
    (``hooks.TrainMetrics`` runs on all of them), and only the main one logs the values."""
    values = {}
    for name, module in model.named_modules():
        report = getattr(module, "log_values", None)
        if report is None:
            continue
        tag = name.replace("model.layers.", "layer").replace(".mlp.act", "").replace(".", "/")
        values.update({f"polycom/{tag}/{key}": value for key, value in report().items()})
    return values


def expert_load_metrics(expert_load: torch.Tensor) -> dict:
    """Per MoE layer: min / max fraction of routed tokens per expert and the entropy of the load."""
    values = {}
    for layer, load in enumerate(expert_load.float()):
        entropy = -(load.clamp_min(1e-12) * load.clamp_min(1e-12).log()).sum()
        values[f"moe/layer{layer}/load_min"] = load.min().item()
        values[f"moe/layer{layer}/load_max"] = load.max().item()
        values[f"moe/layer{layer}/load_entropy"] = entropy.item()
    return values

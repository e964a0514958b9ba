"""Decoder-only transformer with a configurable FFN activation, as a Hugging Face causal LM.

Pre-norm RMSNorm blocks, RoPE, causal SDPA attention, no biases, tied or untied embeddings. Each block's
FFN is dense (``FeedForward``) or a mixture of experts (``polycom.model.moe``) when ``num_experts > 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from .checkpointing import CHECKPOINTING_MODES, checkpoint_layer, checkpoint_recomputing_elementwise
from .config import PolyComConfig
from .layers import CausalSelfAttention, FeedForward, RMSNorm, RotaryEmbedding
from .losses import chunked_cross_entropy


# transformers renamed the KV cache argument and output field from ``past_key_values`` to ``cache`` (5.2x);
# ``generate()`` passes whichever its version uses, so both are accepted and the output uses the current name.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class PolyComCausalLMOutput(CausalLMOutputWithPast):
    """``loss`` is the LM loss plus the weighted MoE losses; each part is also reported on its own."""

    lm_loss: torch.FloatTensor | None = None
    load_balance_loss: torch.FloatTensor | None = None
    router_z_loss: torch.FloatTensor | None = None
    expert_load: torch.FloatTensor | None = None  # (layers, experts): fraction of routed tokens per expert


class DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm attention and FFN blocks. As a ``GradientCheckpointingLayer`` the whole layer is recomputed in
    backward once ``gradient_checkpointing`` is set (``activation_checkpointing="full"``); ``recompute_ffn``
    (``"activation"``) recomputes only the FFN's elementwise ops (``checkpointing``)."""

    recompute_ffn = False

    def __init__(self, config: PolyComConfig, layer_idx: int):
        super().__init__()
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.is_moe:
            from .moe import MoEFeedForward

            self.mlp = MoEFeedForward(config)
        else:
            self.mlp = FeedForward(config)

    def forward(self, x, cos, sin, attn_mask, is_causal, cache=None):
        x = x + self.attn(self.input_norm(x), cos, sin, attn_mask, is_causal, cache)
        if self.recompute_ffn and self.training and torch.is_grad_enabled():
            out = checkpoint_recomputing_elementwise(self._ffn, x)
        else:
            out = self._ffn(x)
        if isinstance(out, torch.Tensor):
            return x + out, None
        return x + out.hidden_states, out

    def _ffn(self, x):
        return self.mlp(self.ffn_norm(x))


class PolyComPreTrainedModel(PreTrainedModel):
    config_class = PolyComConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True
    _skip_keys_device_placement = ["past_key_values"]
    supports_gradient_checkpointing = True  # gradient_checkpointing_enable(): every DecoderLayer recomputed

    def set_activation_checkpointing(self, mode: str) -> None:
        """What the decoder layers keep for backward in training (``polycom.model.checkpointing``): "none",
        "activation" (the FFN's elementwise ops recomputed) or "full" (each layer recomputed from its input, as
        ``gradient_checkpointing_enable()``). Non-reentrant ``torch.utils.checkpoint`` in every mode."""
        if mode not in CHECKPOINTING_MODES:
            raise ValueError(f"activation checkpointing {mode!r} is unknown; valid: {', '.join(CHECKPOINTING_MODES)}")
        # transformers' own switch, without the input-embedding hook its public enable adds for reentrant checkpoints
        self._set_gradient_checkpointing(enable=mode == "full", gradient_checkpointing_func=checkpoint_layer)
        for module in self.modules():
            if isinstance(module, DecoderLayer):
                module.recompute_ffn = mode == "activation"

    @property
    def activation_checkpointing(self) -> str:
        layers = [m for m in self.modules() if isinstance(m, DecoderLayer)]
        if layers and all(m.gradient_checkpointing for m in layers):
            return "full"
        return "activation" if layers and all(m.recompute_ffn for m in layers) else "none"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) for matrices; output projections into the residual stream (marked
        ``is_residual_projection``) get std / sqrt(2 * layers) when ``scaled_residual_init``.

        Initialization is decided per leaf module: transformers skips parameter-less container modules
        of custom code, so a container-level rule would silently never run."""
        cfg = self.config
        std = cfg.initializer_range
        residual_std = std / math.sqrt(2 * cfg.num_hidden_layers) if cfg.scaled_residual_init else std
        if isinstance(module, nn.Linear):
            residual = getattr(module, "is_residual_projection", False)
            init.normal_(module.weight, mean=0.0, std=residual_std if residual else std)
        elif hasattr(module, "init_weights_"):  # modules that initialise themselves: MoE experts, PolyCom
            module.init_weights_(std=std, residual_std=residual_std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)


class PolyComModel(PolyComPreTrainedModel):
    def __init__(self, config: PolyComConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
    ):
        past_key_values = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, seq = x.shape[:2]
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        padded = attention_mask is not None and not bool(attention_mask.all())
        if position_ids is None:
            if padded:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
            else:
                position_ids = torch.arange(past, past + seq, device=x.device).unsqueeze(0).expand(batch, -1)
        attn_mask, is_causal = _attention_mask(attention_mask if padded else None, seq, past, x.device)
        if self.config.document_mask and input_ids is not None and past == 0:
            attn_mask, is_causal = _within_documents(attn_mask, input_ids, self.config.eos_token_id), False
        cos, sin = self.rotary(position_ids, x.dtype)

        hidden_states = [x] if output_hidden_states else None
        router_outputs = []
        for layer in self.layers:
            x, router_out = layer(x, cos, sin, attn_mask, is_causal, cache=past_key_values)
            if router_out is not None:
                router_outputs.append(router_out)
            if output_hidden_states:
                hidden_states.append(x)
        x = self.norm(x)
        if output_hidden_states:
            hidden_states[-1] = x
        return x, past_key_values, hidden_states, router_outputs


def _attention_mask(padding_mask, seq: int, past: int, device) -> tuple[torch.Tensor | None, bool]:
    """(boolean mask or None, is_causal) for SDPA. The fast path (no padding, no cache) uses is_causal."""
    if padding_mask is None:
        if past == 0:
            return None, seq > 1
        if seq == 1:
            return None, False
    kv_len = past + seq
    query_pos = torch.arange(past, kv_len, device=device)[:, None]
    mask = torch.arange(kv_len, device=device)[None, :] <= query_pos  # (seq, kv_len)
    if padding_mask is not None:
        keep = padding_mask[:, None, None, -kv_len:].bool()
        # a padded query position would see no key at all; let it see itself so SDPA stays finite
        diagonal = torch.arange(kv_len, device=device)[None, :] == query_pos
        mask = (mask & keep) | diagonal
    return mask, False


def _within_documents(mask: torch.Tensor | None, input_ids: torch.Tensor, eos: int) -> torch.Tensor:
    """``mask`` (None: causal) restricted to pairs of tokens of one document, (batch, 1, seq, seq) for SDPA. A
    document ends with ``eos``, which belongs to it; the next token starts another. With RoPE a document then gets
    the outputs it would get alone (attention sees only relative positions). Not applied while decoding with a KV
    cache, whose earlier tokens are not known here."""
    seq = input_ids.shape[1]
    ends = (input_ids == eos).long()
    documents = ends.cumsum(-1) - ends  # EOS tokens before each token
    if mask is None:
        mask = torch.ones(seq, seq, dtype=torch.bool, device=input_ids.device).tril()
    return mask & (documents[:, None, :, None] == documents[:, None, None, :])


class PolyComForCausalLM(PolyComPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: PolyComConfig):
        super().__init__(config)
        self.model = PolyComModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> PolyComCausalLMOutput:
        """``labels`` are the input ids themselves (shifted inside); -100 marks positions to ignore. The KV cache
        comes as ``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier)."""
        x, cache, hidden_states, router_outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x)

        out = PolyComCausalLMOutput(logits=logits, **{_CACHE_FIELD: cache if use_cache else None})
        if output_hidden_states:
            out.hidden_states = tuple(hidden_states)
        if router_outputs:
            out.load_balance_loss = torch.stack([r.load_balance_loss for r in router_outputs]).mean()
            out.router_z_loss = torch.stack([r.router_z_loss for r in router_outputs]).mean()
            out.expert_load = torch.stack([r.expert_load for r in router_outputs]).detach()
        if labels is not None:
            out.lm_loss = causal_lm_loss(logits, labels)
            out.loss = out.lm_loss
            if router_outputs:
                out.loss = (
                    out.loss
                    + self.config.router_aux_loss_coef * out.load_balance_loss
                    + self.config.router_z_loss_coef * out.router_z_loss
                )
        return out


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy in fp32, mean (or sum) over the positions not ignored; position t predicts
    labels[t + 1].

    The labels are shifted (the last position gets -100), not the logits: slicing the (batch, seq, vocab)
    logits would copy them, and its backward would zero-fill and copy a gradient of the same size. The logits
    are upcast one chunk at a time (``losses.chunked_cross_entropy``), never as a whole fp32 copy."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
    return chunked_cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100,
                                 reduction=reduction)

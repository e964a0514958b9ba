"""`PolyComConfig`: the model's Hugging Face configuration.

``intermediate_size`` / ``moe_intermediate_size`` are the FFN (per-expert) hidden widths the model really
has, as in every Hugging Face config. Runs compare activations at equal parameter count: the training config
names the *gated* (SwiGLU) width, and non-gated activations get 1.5x it, rounded to a multiple
(3·d·h = 2·d·1.5h). ``PolyComConfig.matched`` applies that rule and records where the widths came from in
``ffn_width_source``, so an exported ``config.json`` states both the real width and the rule behind it.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .activations import MAX_ORDER, MIN_ORDER, get_activation


def matched_ffn_width(gated_width: int, gated: bool, multiple: int) -> int:
    """Hidden width that gives a (non-)gated FFN the parameters of a gated one of ``gated_width``."""
    width = gated_width if gated else 1.5 * gated_width
    return max(multiple, int(round(width / multiple)) * multiple)


class PolyComConfig(PretrainedConfig):
    model_type = "polycom"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 8192
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 1024
    activation: str = "polynorm"
    activation_order: int = 3
    intermediate_size: int = 1056  # the dense FFN's hidden width (per gate for gated activations)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    polycom_eps: float = 1e-6
    qk_norm: bool = False
    initializer_range: float = 0.02
    scaled_residual_init: bool = True
    tie_word_embeddings: bool = False
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Mixture of experts: num_experts == 0 means a dense FFN in every layer.
    num_experts: int = 0
    num_experts_per_tok: int = 1
    moe_intermediate_size: int = 0  # one expert's hidden width
    norm_topk_prob: bool = False
    router_jitter: float = 0.0
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.001
    moe_shared_coefficients: bool = True
    # How the widths were chosen (``matched``): the gated widths they are matched to and the rounding multiple.
    ffn_width_source: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        legacy_multiple = self.__dict__.pop("ffn_width_multiple", None)
        if legacy_multiple is not None and self.ffn_width_source is None:
            # config.json written before 2026-12-04 held the gated widths and the multiple: convert them
            self._apply_matching(self.intermediate_size, self.moe_intermediate_size, legacy_multiple)
        self.validate()

    @classmethod
    def matched(cls, *, intermediate_size: int = 704, moe_intermediate_size: int = 0, ffn_width_multiple: int = 16,
                **kwargs) -> "PolyComConfig":
        """A config whose FFN widths give the parameters of a gated (SwiGLU) FFN of ``intermediate_size``
        (one expert of ``moe_intermediate_size``) whatever the activation."""
        config = cls(intermediate_size=intermediate_size, moe_intermediate_size=moe_intermediate_size, **kwargs)
        config._apply_matching(intermediate_size, moe_intermediate_size, ffn_width_multiple)
        config.validate()
        return config

    def _apply_matching(self, gated_width: int, gated_expert_width: int, multiple: int) -> None:
        gated = get_activation(self.activation).gated
        self.intermediate_size = matched_ffn_width(gated_width, gated, multiple)
        self.moe_intermediate_size = matched_ffn_width(gated_expert_width, gated, multiple) if gated_expert_width else 0
        self.ffn_width_source = {
            "rule": "parameters matched to a gated (SwiGLU) FFN: non-gated activations get 1.5x its width, "
                    "rounded to width_multiple",
            "gated_intermediate_size": gated_width, "gated_moe_intermediate_size": gated_expert_width,
            "width_multiple": multiple,
        }

    def validate(self) -> None:
        """Raise ValueError naming the field for inconsistent settings."""
        get_activation(self.activation)
        if not MIN_ORDER <= self.activation_order <= MAX_ORDER:
            raise ValueError(f"activation_order must be in {MIN_ORDER}..{MAX_ORDER}, got {self.activation_order}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("the head dimension hidden_size / num_attention_heads must be even for RoPE")
        if self.num_experts < 0:
            raise ValueError(f"num_experts must be >= 0, got {self.num_experts}")
        if self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be between 1 and num_experts ({self.num_experts})"
            )
        if self.num_experts and self.moe_intermediate_size <= 0:
            raise ValueError("moe_intermediate_size must be > 0 for an MoE model")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

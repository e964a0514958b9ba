"""`PolyComConfig`: the model's Hugging Face configuration.

``intermediate_size`` is the hidden width of a *gated* (SwiGLU) FFN. Non-gated activations get 1.5x that
width, rounded to ``ffn_width_multiple``, so every activation has the same FFN parameter count
(3·d·h = 2·d·1.5h). The width the model actually uses is ``ffn_hidden_size``.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from polycom.activations import MAX_ORDER, MIN_ORDER, get_activation


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
    intermediate_size: int = 704
    ffn_width_multiple: int = 16
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
    moe_intermediate_size: int = 0  # gated (SwiGLU) width of one expert
    norm_topk_prob: bool = False
    router_jitter: float = 0.0
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.001
    moe_shared_coefficients: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate()

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

    @property
    def ffn_hidden_size(self) -> int:
        """Hidden width of a dense FFN for this activation (1.5x rule applied)."""
        gated = get_activation(self.activation).gated
        return matched_ffn_width(self.intermediate_size, gated, self.ffn_width_multiple)

    @property
    def expert_hidden_size(self) -> int:
        """Hidden width of one expert for this activation (1.5x rule applied)."""
        gated = get_activation(self.activation).gated
        return matched_ffn_width(self.moe_intermediate_size, gated, self.ffn_width_multiple)

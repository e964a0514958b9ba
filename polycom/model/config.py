"""`PolyComConfig`: the model's Hugging Face configuration.

``intermediate_size`` / ``moe_intermediate_size`` are the FFN (per-expert) hidden widths the model really
has, as in every Hugging Face config. Runs compare activations at equal parameter count: the training config
names the *gated* (SwiGLU) width, and non-gated activations get 1.5x it, rounded to a multiple
(3·d·h = 2·d·1.5h). ``PolyComConfig.matched`` applies that rule and records where the widths came from in
``ffn_width_source``, so an exported ``config.json`` states both the real width and the rule behind it.

The training config's ``model`` and ``activation`` groups (``ModelSchema``, ``ActivationSchema``) are derived from
``PolyComConfig``'s own fields, so the model's settings are declared once; ``PolyComConfig.from_schema`` builds the
model config from them, and ``check_model_fields`` holds every consistency check of those settings, for both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from transformers import PretrainedConfig

from .activations import ACTIVATIONS, MAX_ORDER, MIN_ORDER, get_activation


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
    # attention within documents only: a token attends to the tokens of its own document, which ends with
    # eos_token_id (set from the training config's data.document_mask; polycom.model.modeling._within_documents)
    document_mask: bool = False
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

    @classmethod
    def from_schema(cls, model: Mapping, activation: Mapping, **fields) -> "PolyComConfig":
        """The config of the training config's ``model`` and ``activation`` groups, widths matched; ``fields``:
        what comes from elsewhere (``vocab_size`` and token ids from the tokenizer, ``use_cache``)."""
        return cls.matched(**{key: model[key] for key in model}, activation=activation["name"],
                           activation_order=activation["order"], polycom_eps=activation["eps"], **fields)

    def validate(self) -> None:
        """Raise ValueError naming the field for inconsistent settings."""
        check_model_fields(lambda key: getattr(self, key))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


def check_model_fields(get: Callable[[str], object], name: Callable[[str], str] = lambda key: key) -> None:
    """Every consistency check of the model's settings, in one place. ``get(field)`` reads a ``PolyComConfig``
    field; ``name(field)`` is how an error calls it (``model.hidden_size`` for the training config)."""

    def require(condition: bool, message: str) -> None:
        if not condition:
            raise ValueError(message)

    act, order = get("activation"), get("activation_order")
    require(act in ACTIVATIONS, f"{name('activation')}={act!r} is unknown; valid: {', '.join(ACTIVATIONS)}")
    require(MIN_ORDER <= order <= MAX_ORDER, f"{name('activation_order')}={order} must be in {MIN_ORDER}..{MAX_ORDER}")
    orders = ACTIVATIONS[act].orders
    require(order in orders, f"{name('activation_order')}={order} is not an order of {act}; valid: {orders}")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings"):
        require(get(key) > 0, f"{name(key)}={get(key)} must be > 0")
    d, heads = get("hidden_size"), get("num_attention_heads")
    require(d % heads == 0, f"{name('hidden_size')}={d} is not divisible by {name('num_attention_heads')}={heads}; "
                            "choose heads that divide it")
    require((d // heads) % 2 == 0, f"{name('hidden_size')} / {name('num_attention_heads')} (the head dimension, "
                                   f"{d // heads}) must be even for RoPE")
    experts = get("num_experts")
    require(experts >= 0, f"{name('num_experts')}={experts} must be >= 0 (0 = dense)")
    if experts:
        k = get("num_experts_per_tok")
        require(1 <= k <= experts, f"{name('num_experts_per_tok')}={k} must be between 1 and "
                                   f"{name('num_experts')}={experts}")
        require(get("moe_intermediate_size") > 0,
                f"{name('moe_intermediate_size')}={get('moe_intermediate_size')} must be > 0 when "
                f"{name('num_experts')} > 0")


# ---- the training config's model and activation groups ---------------------------------------------------------
# Not set by hand: the vocabulary and token ids (from the tokenizer), the activation (its own group), caching, the
# record of how the widths were chosen, and the document mask (data.document_mask).
_NOT_IN_SCHEMA = {"vocab_size", "activation", "activation_order", "polycom_eps", "use_cache", "bos_token_id",
                  "eos_token_id", "pad_token_id", "ffn_width_source", "document_mask"}
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
ModelSchema = dataclasses.make_dataclass("ModelSchema", [
    (key, _TYPES[kind], dataclasses.field(default=704 if key == "intermediate_size" else getattr(PolyComConfig, key)))
    for key, kind in PolyComConfig.__annotations__.items() if key not in _NOT_IN_SCHEMA
] + [("ffn_width_multiple", int, dataclasses.field(default=16))])
ModelSchema.__doc__ = ("The ``model`` group: ``PolyComConfig``'s fields, except that ``intermediate_size`` and "
                       "``moe_intermediate_size`` are the gated (SwiGLU) widths every activation is matched to, "
                       "rounded to ``ffn_width_multiple``.")


@dataclasses.dataclass
class ActivationSchema:
    """The ``activation`` group: ``PolyComConfig.activation``, ``activation_order``, ``polycom_eps``."""

    name: str = "polynorm"
    order: int = 3
    eps: float = 1e-6


_SCHEMA_NAMES = {"activation": "activation.name", "activation_order": "activation.order",
                 "polycom_eps": "activation.eps"}


def check_schema(model: Mapping, activation: Mapping) -> None:
    """``check_model_fields`` on the training config's groups, errors naming ``model.<key>`` / ``activation.<key>``."""
    values = {"activation": activation["name"], "activation_order": activation["order"],
              "polycom_eps": activation["eps"]}
    check_model_fields(lambda key: values[key] if key in values else model[key],
                       lambda key: _SCHEMA_NAMES.get(key, f"model.{key}"))
    if model["ffn_width_multiple"] <= 0:
        raise ValueError(f"model.ffn_width_multiple={model['ffn_width_multiple']} must be > 0")

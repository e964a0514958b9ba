"""The PolyCom decoder: config, layers, dense/MoE FFNs, and the Hugging Face causal-LM wrapper.

Importing this package registers ``model_type="polycom"`` with AutoConfig and AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from polycom.model.config import PolyComConfig, matched_ffn_width
from polycom.model.modeling import PolyComForCausalLM, PolyComModel

AutoConfig.register(PolyComConfig.model_type, PolyComConfig, exist_ok=True)
AutoModelForCausalLM.register(PolyComConfig, PolyComForCausalLM, exist_ok=True)

__all__ = ["PolyComConfig", "PolyComForCausalLM", "PolyComModel", "matched_ffn_width"]

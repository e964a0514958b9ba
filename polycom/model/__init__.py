"""The PolyCom decoder: config, layers, dense/MoE FFNs, and the Hugging Face causal-LM wrapper.

Importing this package registers ``model_type="polycom"`` with AutoConfig and AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from polycom.model.config import PolyComConfig, matched_ffn_width
from polycom.model.modeling import PolyComForCausalLM, PolyComModel

AutoConfig.register(PolyComConfig.model_type, PolyComConfig, exist_ok=True)
AutoModelForCausalLM.register(PolyComConfig, PolyComForCausalLM, exist_ok=True)
# save_pretrained writes this package's model code beside the weights and an auto_map into config.json, so an
# export loads with AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True) without polycom installed.
PolyComConfig.register_for_auto_class()
PolyComForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["PolyComConfig", "PolyComForCausalLM", "PolyComModel", "matched_ffn_width"]

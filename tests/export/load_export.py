"""Load an exported model folder the way someone without polycom would (test-only; run in a clean interpreter).

    python tests/export/load_export.py <model folder> <out.json>

The test puts a ``polycom`` package that refuses to import first on PYTHONPATH, so any import of ours from the
exported code fails loudly. Writes the logits of a fixed text, a greedy continuation and what was loaded.
"""

import json
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

folder, out = sys.argv[1], sys.argv[2]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(input_ids=ids).logits
    generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
json.dump({
    "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
    "config_class": f"{type(config).__module__}.{type(config).__qualname__}",
    "intermediate_size": config.intermediate_size,
    "input_ids": ids.tolist(),
    "logits": logits.tolist(),
    "generated": generated.tolist(),
    "decoded": tokenizer.decode(generated[0]),
    "polycom_imported": any(name == "polycom" or name.startswith("polycom.") for name in sys.modules),
}, open(out, "w"))

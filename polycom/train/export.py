"""What a finished run leaves for others: the model in Hugging Face format under ``<run_dir>/hf`` (weights,
tokenizer, and, through ``save_pretrained``, the model's own code and ``auto_map``) with a model card, and the
code version recorded in its summary."""

from __future__ import annotations

import subprocess
from pathlib import Path

from accelerate import Accelerator


def code_version() -> str | None:
    """The git commit of the code that ran (``+dirty`` with uncommitted changes), for reproducibility."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def model_card(summary: dict) -> str:
    """A README.md for the exported folder: what the model is, how it was trained, how to load and evaluate it."""
    val = f"{summary['val_loss']:.4f} (perplexity {summary['val_ppl']:.2f})" if summary.get("val_loss") else "n/a"
    order = f", order {summary['activation_order']}" if summary.get("activation_order") is not None else ""
    return f"""---
library_name: transformers
tags: [polycom, {summary['activation']}]
---
# {summary['activation']}{order}, seed {summary['seed']}

A decoder-only language model trained with polycom, a codebase comparing FFN activations (PolyNorm and PolyReLU,
Zhuo et al., ICLR 2025, against ReLU, GELU, SwiGLU and ReLU²) at equal parameter count.

| | |
|---|---|
| parameters | {summary['num_params']:,} ({summary['num_params_active']:,} active per token) |
| FFN hidden width | {summary['ffn_hidden_size']} |
| training tokens | {summary['tokens']:,} ({summary['steps']:,} steps) |
| validation loss | {val} on {summary['val_tokens']:,} held-out tokens |
| code version | {summary.get('code_version') or 'unknown'} |

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder>", trust_remote_code=True)  # runs the .py files here
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

Evaluate with `lm_eval run --model hf --model_args pretrained=<this folder>,trust_remote_code=True --tasks ...`.
The model's code (`modeling.py` and the files it imports) needs only `torch` and `transformers`.
"""


COMPILED_PREFIX = "_orig_mod."  # what torch.compile's wrapper adds to the names of the module's weights


def export_hf(accelerator: Accelerator, model, tokenizer, run_dir: Path, summary: dict) -> None:
    """The final model, tokenizer and model card under ``<run_dir>/hf`` (collective: every process calls it).

    A ``torch.compile``'d model's state dict names every weight ``_orig_mod.<name>``; the export strips that, or
    ``from_pretrained`` would find none of its weights and initialise the model at random (with a load report
    as the only sign)."""
    state_dict = accelerator.get_state_dict(model)  # collective under DeepSpeed/FSDP
    if accelerator.is_main_process:
        state_dict = {name.replace(COMPILED_PREFIX, ""): value for name, value in state_dict.items()}
        out = Path(run_dir) / "hf"
        plain = accelerator.unwrap_model(model, keep_torch_compile=False)
        plain.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / "README.md").write_text(model_card(summary))
    accelerator.wait_for_everyone()

"""What a finished run leaves for others: the model in Hugging Face format under ``<run_dir>/hf`` (weights,
tokenizer, and, through ``save_pretrained``, the model's own code and ``auto_map``) with a model card, and the
code version recorded in its summary. The export is the same under one process, DDP and FSDP, and atomic."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import torch
from accelerate import Accelerator

from polycom.runs import HF_DIR


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
PARTIAL_SUFFIX = ".tmp"  # hf.tmp: an export being written


def export_hf(accelerator: Accelerator, model, tokenizer, run_dir: Path, summary: dict) -> None:
    """The final model, tokenizer and model card under ``<run_dir>/hf`` (collective: every process calls it).

    The folder is written as ``hf.tmp`` and renamed to ``hf`` when complete, so a crash mid-export never leaves a
    partial ``hf`` that looks whole (an older ``hf`` is replaced only then).

    The weights are the full state dict (gathered from the shards under FSDP). They are saved through a model of
    the trained class built on the meta device, not through the trained module: ``save_pretrained`` copies the code
    of the module's class and names it in ``auto_map``, and under FSDP2 that class is torch's ``FSDP<name>``
    subclass (whose code is torch's). A ``torch.compile``'d model's state dict names every weight
    ``_orig_mod.<name>``; the export strips that, or ``from_pretrained`` would find none of its weights and
    initialise the model at random (with a load report as the only sign)."""
    state_dict = accelerator.get_state_dict(model)  # collective under DeepSpeed/FSDP
    if accelerator.is_main_process:
        state_dict = {name.replace(COMPILED_PREFIX, ""): value for name, value in state_dict.items()}
        trained = accelerator.unwrap_model(model, keep_torch_compile=False)
        with torch.device("meta"):  # no second copy of the weights: only the class, config and code are needed
            plain = model_class(trained)(trained.config)
        out = Path(run_dir) / HF_DIR
        partial = out.with_name(HF_DIR + PARTIAL_SUFFIX)
        shutil.rmtree(partial, ignore_errors=True)
        plain.save_pretrained(partial, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        (partial / "README.md").write_text(model_card(summary))
        _publish(partial, out)
    accelerator.wait_for_everyone()


def model_class(module) -> type:
    """The class a model was built as: FSDP2's ``fully_shard`` swaps a module's class for a subclass
    ``FSDP<name>(FSDPModule, <name>)``."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(module)
    if issubclass(cls, FSDPModule):
        cls = next(base for base in cls.__bases__ if base is not FSDPModule)
    return cls


def _publish(partial: Path, out: Path) -> None:
    """Rename the complete ``partial`` folder to ``out``; an existing ``out`` is moved aside first, then removed."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(partial, out)
    shutil.rmtree(old, ignore_errors=True)

"""Loading an exported model (``<run>/hf``) for analysis and evaluation, refusing one whose weights did not load."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer


def load_exported(folder: Path, device: str = "cpu"):
    """``(model in eval mode on device, tokenizer)`` from a ``save_pretrained`` folder.

    ``from_pretrained`` initialises any weight it does not find in the checkpoint at random and only prints a
    load report, so a mis-named export (a compiled model's ``_orig_mod.`` prefix) would be analysed and evaluated
    as an untrained model; here a missing weight is an error that names it."""
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    if missing:
        raise ValueError(f"{folder}: {len(missing)} of the model's weights are not in its checkpoint "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); they would be random. "
                         f"Weights it has instead: {', '.join(sorted(info['unexpected_keys'])[:3]) or 'none'}")
    return model.to(device).eval(), AutoTokenizer.from_pretrained(folder)

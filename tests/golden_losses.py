"""Golden per-step losses: 20 steps of the tiny model per activation, backend and FFN kind, through the real
training loop (Gutenberg data, BPE tokenizer, AdamW, cosine schedule). They pin the hand-written forward and
backward passes in ``polycom/model/activations.py`` (and everything else on the training path) against silent
drift: ``tests/test_golden_losses.py`` reruns each case and compares.

Regenerate only after a change that is *meant* to change training numbers, and say so in the commit:

    POLYCOM_DATA_DIR=../shared/data python tests/golden_losses.py     # rewrites tests/assets/golden_losses.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ASSET = Path(__file__).resolve().parent / "assets" / "golden_losses.json"
STEPS = 20
OVERRIDES = ["model=tiny", "debug=smoke", "logger=none", "tokenizer.vocab_size=512", "trainer.progress_bar=false",
             "data=gutenberg", f"trainer.max_steps={STEPS}", "trainer.log_interval=1", "trainer.save_hf=false",
             "trainer.checkpoint_interval=null", "eval.interval=null", "optim.lr=3e-3"]
# (name, train.py overrides, activation backend); the compiled backend only exists for PolyNorm / PolyReLU
CASES = [(f"dense-{a}-eager", [f"activation={a}"], "eager")
         for a in ("relu", "gelu", "swiglu", "relu2", "polyrelu", "polynorm")]
CASES += [(f"dense-{a}-compiled", [f"activation={a}"], "compiled") for a in ("polyrelu", "polynorm")]
CASES += [(f"moe-{a}-eager", ["model=moe_tiny", f"activation={a}"], "eager") for a in ("swiglu", "polynorm")]
CASES += [("moe-polynorm-compiled", ["model=moe_tiny", "activation=polynorm"], "compiled")]


def run_case(overrides: list[str], backend: str, run_dir: Path) -> list[float]:
    """The logged loss of every step of one case."""
    from polycom.model import activations
    from polycom.train.build import compose_config
    from polycom.train.trainer import train

    cfg = compose_config(OVERRIDES + overrides)
    default, activations._DEFAULT_BACKEND = activations._DEFAULT_BACKEND, backend
    try:
        train(cfg, run_dir)
    finally:
        activations._DEFAULT_BACKEND = default
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    if not os.environ.get("POLYCOM_DATA_DIR"):
        sys.exit("set POLYCOM_DATA_DIR to the shared data folder")
    golden = {}
    for name, overrides, backend in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            golden[name] = run_case(overrides, backend, Path(tmp))
        print(name, golden[name][0], golden[name][-1])
    ASSET.write_text(json.dumps({"steps": STEPS, "losses": golden}, indent=1) + "\n")
    print(f"wrote {ASSET}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import conftest  # noqa: F401  same environment as the tests (offline, caches in a temporary folder)

    main()

"""Peak memory and time of the LM loss (forward + backward) on bf16 logits: ``F.cross_entropy(logits.float())``
(the loss before) against ``polycom.model.losses.chunked_cross_entropy`` (the loss now).

    python scripts/benchmark_loss.py [--rows 4096] [--vocab 50304] [--device cpu] [--out experiments/benchmarks]

Each variant runs in its own process. The logits (rows x vocab, bf16, as autocast's lm_head gives them) exist
before the loss; what is reported is the memory the loss adds on top of them at its peak, its gradient
included (one bf16 logits-sized tensor, which any loss needs): on CPU the growth of the peak resident set
(``ru_maxrss``), on CUDA ``torch.cuda.max_memory_allocated``. Writes ``<date>-loss-memory-<device>.md`` and
``.json`` to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("torch", "chunked")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(variant: str, rows: int, vocab: int, device: str) -> dict:
    import resource

    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO))
    from polycom.model.losses import chunked_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(rows, vocab, device=device).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    start = time.perf_counter()
    if variant == "torch":
        loss = F.cross_entropy(logits.float(), targets)
    else:
        loss = chunked_cross_entropy(logits, targets)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"variant": variant, "rows": rows, "vocab": vocab, "device": device, "loss": loss.item(),
            "peak_added_bytes": peak, "logits_bytes": logits.numel() * logits.element_size(), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.rows, args.vocab, args.device)))
        return
    results = []
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--variant", variant, "--rows", str(args.rows), "--vocab",
                               str(args.vocab), "--device", args.device], capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    logits_gb = results[0]["logits_bytes"] / 1e9
    lines = [f"Loss forward + backward on bf16 logits {args.rows} x {args.vocab} ({logits_gb:.2f} GB), {args.device}; "
             "memory added at the peak, gradient included (`scripts/benchmark_loss.py`)", "",
             "| loss | peak added (GB) | x logits size | seconds | loss value |", "|---|---:|---:|---:|---:|"]
    for r in results:
        gb = r["peak_added_bytes"] / 1e9
        lines.append(f"| {r['variant']} | {gb:.2f} | {gb / logits_gb:.1f} | {r['seconds']:.2f} | {r['loss']:.6f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        stem = args.out / f"{datetime.date.today().isoformat()}-loss-memory-{args.device}"
        args.out.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(text + "\n")
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

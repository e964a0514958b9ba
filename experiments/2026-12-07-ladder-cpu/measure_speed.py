"""Training-step speed of every rung of the CPU ladder and every activation, for the study's plan (PLAN.md).

    python experiments/2026-12-07-ladder-cpu/measure_speed.py [--steps 4] [--warmup 2] [--threads 2]
                                                              [--activations swiglu,polynorm]

Builds each rung's model (configs/ladder/cpu_r*.yaml, vocabulary 4096, micro-batch 16 x 256, fp32, eager) for each
activation and times full training steps (forward, backward, clip, AdamW: scripts/benchmark.py's ``Entry``), all
models interleaved round-robin so that a change of machine load hits every one alike. It reports the median wall time
and the median *process CPU time* of a step: on a machine shared with other jobs the wall time measures the load, the
CPU time much less so. Prints a markdown table and the load average before and after.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)

from polycom.report.ladder import ladder_rungs  # noqa: E402

ACTIVATIONS = ("relu", "gelu", "swiglu", "relu2", "polyrelu", "polynorm", "gated_polynorm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--activations", default=",".join(ACTIVATIONS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    load_before = os.getloadavg()
    entries = []
    for rung in ladder_rungs("cpu").values():
        d, layers, heads, width = rung.dims
        size = SimpleNamespace(size=(d, layers, heads, width), vocab=4096, seq_len=256, act_backend="auto",
                               compile=False, autocast_dtype=None)
        for act in args.activations.split(","):
            entry = benchmark.Entry(act, benchmark.polycom_model(act, size), size, device)
            entry.rung = rung.name
            entries.append((entry, size))
    batch = torch.randint(0, 4096, (args.micro_batch, 256), generator=torch.Generator().manual_seed(0))
    for i in range(args.warmup + args.steps):
        for entry, size in entries:
            wall = benchmark.timed_step(entry, batch, size, device)
            if i < args.warmup:  # untimed
                entry.cpu_times.pop()
            else:
                entry.times.append(wall)
    load_after = os.getloadavg()
    tokens = args.micro_batch * 256
    print(f"| rung | activation | step wall s | tokens/s (wall) | step CPU s | tokens per CPU-second |")
    print("|---|---|---|---|---|---|")
    for entry, _ in entries:
        wall, cpu = statistics.median(entry.times), statistics.median(entry.cpu_times)
        print(f"| {entry.rung} | {entry.name} | {wall:.3f} | {tokens / wall:,.0f} | {cpu:.3f} | {tokens / cpu:,.0f} |")
    print(f"\nthreads {args.threads}; load average before {load_before}, after {load_after}")


if __name__ == "__main__":
    main()

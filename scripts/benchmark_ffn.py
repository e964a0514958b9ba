"""One FFN layer and its activation alone, forward + backward on CPU, per activation and PolyCom backend.

    python scripts/benchmark_ffn.py [--rows 4096] [--d-model 256] [--hidden 1056] [--repeats 30] [--threads 2,1]

The layer is ``W2 act(W1 x)`` without biases (d 256 -> 1056 -> 256; SwiGLU ``W2 (silu(Wg x) * Wu x)`` at the
matched gated width 704), input (4096, 256) fp32 requiring grad; a call is the forward and
``torch.autograd.grad`` of the output (against a fixed random gradient) with respect to the input, the
matrices and the activation's coefficients. "activation alone" is the same for the activation on a (4096, 1056)
input (SwiGLU: silu(gate) * up on two (4096, 704) halves). PolyNorm and PolyReLU run with the backends
``eager`` (the C kernels of ``polycom.model.cpu_kernels``), ``eager-torch-ops`` (the same autograd functions
with the C kernels switched off: the eager path before them) and ``compiled`` (torch.compile'd bodies).

Calls are interleaved round-robin over all configurations (so a burst of load hits all alike) after warm-up;
medians are reported, with ratios to GELU's. "saved" is what autograd keeps for the activation's backward
(parameters excluded), in bytes and in hidden-sized tensors. Writes ``<date>-ffn-cpu.md`` and ``.json`` to
``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import machine_info, saved_bytes  # scripts/benchmark.py (this folder is on sys.path)
from polycom.model import cpu_kernels
from polycom.model.activations import PolyNorm, PolyReLU


class SwiGLU(nn.Module):
    def forward(self, h):
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up


def configurations(order: int) -> list[tuple[str, str, nn.Module]]:
    """(activation, backend, module); backend "-" for the plain activations."""
    out = [("gelu", "-", nn.GELU()), ("relu", "-", nn.ReLU()), ("swiglu", "-", SwiGLU())]
    for name, cls in (("polynorm", PolyNorm), ("polyrelu", PolyReLU)):
        for backend in ("eager", "eager-torch-ops", "compiled"):
            act = cls(order)
            act.backend = "compiled" if backend == "compiled" else "eager"
            out.append((name, backend, act))
    return out


def make_calls(act: nn.Module, gated: bool, args):
    """(ffn call, activation-alone call) for one activation module."""
    g = torch.Generator().manual_seed(0)
    width = args.gated_hidden if gated else args.hidden
    w1 = (torch.randn(width * (2 if gated else 1), args.d_model, generator=g) / args.d_model**0.5).requires_grad_()
    w2 = (torch.randn(args.d_model, width, generator=g) / width**0.5).requires_grad_()
    x = torch.randn(args.rows, args.d_model, generator=g).requires_grad_()
    gy = torch.randn(args.rows, args.d_model, generator=g)
    h = torch.randn(args.rows, width * (2 if gated else 1), generator=g).requires_grad_()
    gh = torch.randn(args.rows, width, generator=g)
    params = list(act.parameters())

    def ffn():
        out = F.linear(act(F.linear(x, w1)), w2)
        torch.autograd.grad(out, [x, w1, w2, *params], gy)

    def alone():
        torch.autograd.grad(act(h), [h, *params], gh)

    return ffn, alone, h


def measure(runs: list[dict], args, threads: int) -> list[dict]:
    """Median times of every configuration at ``threads`` threads, calls interleaved round-robin."""
    torch.set_num_threads(threads)
    times = [{"ffn": [], "act": []} for _ in runs]
    for rep in range(args.warmup + args.repeats):
        for run, kept in zip(runs, times):
            cpu_kernels.ENABLED = run["backend"] != "eager-torch-ops"
            for kind, call in run["calls"].items():
                start = time.perf_counter()
                call()
                if rep >= args.warmup:
                    kept[kind].append(time.perf_counter() - start)
    cpu_kernels.ENABLED = True
    gelu = {kind: statistics.median(times[0][kind]) for kind in ("ffn", "act")}
    rows = []
    for run, kept in zip(runs, times):
        row = {"threads": threads, **{k: v for k, v in run.items() if k != "calls"}}
        for kind in ("ffn", "act"):
            median = statistics.median(kept[kind])
            row[f"{kind}_ms"], row[f"{kind}_vs_gelu"] = 1e3 * median, median / gelu[kind]
            row[f"{kind}_ms_min"] = 1e3 * min(kept[kind])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=1056)
    parser.add_argument("--gated-hidden", type=int, default=704)
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", default=str(torch.get_num_threads()),
                        help="comma-separated thread counts, each measured in turn (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("experiments/benchmarks"))
    args = parser.parse_args()
    torch.manual_seed(0)
    if not cpu_kernels.available():
        sys.exit("the C kernels are not available here (see the warning above); nothing to compare")

    runs = []
    for name, backend, act in configurations(args.order):
        ffn, alone, h = make_calls(act, name == "swiglu", args)
        cpu_kernels.ENABLED = backend != "eager-torch-ops"
        saved = saved_bytes(act, h)
        hidden = h[:, : args.gated_hidden if name == "swiglu" else args.hidden].nbytes
        runs.append({"activation": name, "backend": backend, "calls": {"ffn": ffn, "act": alone},
                     "saved_bytes": saved, "saved_hidden_tensors": saved / hidden})
    load_before = os.getloadavg()
    rows = [row for threads in args.threads.split(",") for row in measure(runs, args, int(threads))]

    today = datetime.date.today().isoformat()
    setup = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "dtype": "float32"}
    machine = {**machine_info(torch.device("cpu")), "load_average_before": load_before,
               "load_average_after": os.getloadavg()}
    cpu = machine["cpu"]
    command = "python " + " ".join(sys.argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{today}-ffn-cpu.json").write_text(json.dumps(
        {"date": today, "command": command, "setup": setup, "machine": machine, "rows": rows}, indent=2) + "\n")
    table = ["| threads | activation | backend | FFN fwd+bwd ms | FFN / GELU | act fwd+bwd ms | act / GELU | "
             "saved bytes (hidden tensors) |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['threads']} | {r['activation']} | {r['backend']} | {r['ffn_ms']:.2f} | "
                     f"{r['ffn_vs_gelu']:.3f} | {r['act_ms']:.2f} | {r['act_vs_gelu']:.3f} | "
                     f"{r['saved_bytes']:,} ({r['saved_hidden_tensors']:.2f}) |")
    md = [f"# One FFN layer and its activation, forward + backward on CPU ({today})", "",
          f"`{command}`", "",
          f"x ({args.rows}, {args.d_model}) -> {args.hidden} (SwiGLU {args.gated_hidden} gated) -> {args.d_model}, "
          f"no biases, fp32, order {args.order}; {args.warmup} warm-up calls, then medians of {args.repeats} "
          "calls interleaved round-robin over the configurations. `eager` = C kernels, `eager-torch-ops` = the "
          "torch-op bodies (C kernels off; the eager path before the kernels), `compiled` = torch.compile'd "
          "bodies (matmuls eager). Ratios are to GELU at the same thread count.", "",
          f"Machine: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, {machine['platform']}; load "
          f"average (1 min) before/after: {load_before[0]:.1f}/{machine['load_average_after'][0]:.1f}.", "",
          *table, ""]
    (args.out / f"{today}-ffn-cpu.md").write_text("\n".join(md))
    print("\n".join(table))
    print(f"wrote {args.out}/{today}-ffn-cpu.md and .json")


if __name__ == "__main__":
    main()

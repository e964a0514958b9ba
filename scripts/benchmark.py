"""Training-step benchmark of every FFN activation at equal parameter count, plus two outside references.

    python scripts/benchmark.py [--compile] [--steps 20] [--warmup 3] [--model-size 256,4,4,704]
                                [--seq-len 256] [--micro-batch 8] [--vocab 8192] [--out-dir experiments/benchmarks]

In one process, for each activation of the registry (relu, gelu, swiglu, relu2, polyrelu, polynorm) and for
two references measured in the same run --

- ``llama_swiglu``: transformers' ``LlamaForCausalLM`` at the same size (same d, layers, heads, gated width,
  vocab; untied embeddings; sdpa attention): how our SwiGLU model compares with a standard implementation;
- ``polynorm_naive``: our PolyNorm model with each FFN activation swapped for PolyNorm written as in the
  official README (three powers, three norms, every intermediate kept by autograd);

it reports the training-step time (forward + backward + grad-norm clip + AdamW step, as the trainer does;
median over ``--steps`` steps after ``--warmup``; the models' steps are *interleaved* round-robin so that a
change of machine load hits every model alike), tokens/s, peak memory (CPU: resident set size sampled during
one step -- the process-wide high-water mark and the step's own rise over the RSS before it; CUDA:
``max_memory_allocated``), the bytes one FFN activation keeps for backward (``saved_tensors_hooks``, counted
once per storage, parameters excluded), and MFU (``polycom.train.metrics``; CPU peak measured with a large
fp32 matmul, CUDA peak from the datasheet table).

Writes ``<out-dir>/<yyyy-mm-dd>-<machine>-<eager|compiled>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from polycom.model.activations import ACTIVATIONS, BACKENDS, OfficialPolyNorm, set_activation_backend
from polycom.model import PolyComConfig, PolyComForCausalLM, matched_ffn_width
from polycom.model.stats import count_parameters, model_flops_per_token
from polycom.train.metrics import cpu_model, device_peak_flops, measure_cpu_peak_flops, mfu
from polycom.train.optim import build_optimizer

MODEL_SIZES = {  # d_model, layers, heads, gated (SwiGLU) FFN width
    "cpu_small": (256, 4, 4, 704),  # configs/model/cpu_small.yaml: non-gated width 1056
    "gpt2_small": (768, 12, 12, 2048),  # configs/model/gpt2_small.yaml: non-gated width 3072 (use --vocab 50304)
    "tiny": (64, 2, 4, 128),
}
REFERENCES = ("llama_swiglu", "polynorm_naive")


# ---- machine -------------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict:
    info = {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def machine_label(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()}-{os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "machine"


# ---- memory --------------------------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def max_rss_bytes() -> int:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * (1 if sys.platform == "darwin" else 1024)


def release_memory() -> None:
    """Free what can be freed and hand glibc's free heap back to the OS, so RSS starts from a clean base."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class RSSSampler:
    """Samples the resident set size every ``interval`` seconds in a thread; ``peak`` is the largest seen."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def saved_bytes(fn, *inputs) -> int:
    """Bytes autograd keeps for backward while ``fn(*inputs)`` runs, once per storage, parameters excluded."""
    storages: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, nn.Parameter):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    del out
    return sum(storages.values())


# ---- models --------------------------------------------------------------------------------------------------
def ffn_multiple(gated_width: int) -> int:
    """Rounding multiple for the non-gated width that keeps 1.5x exact (so parameter counts are equal)."""
    for m in (16, 8, 4, 2, 1):
        if (3 * gated_width) % (2 * m) == 0:
            return m
    return 1


def nongated_width(gated_width: int) -> int:
    """The FFN width of the non-gated activations, as PolyComConfig.matched gives it for this benchmark."""
    return matched_ffn_width(gated_width, gated=False, multiple=ffn_multiple(gated_width))


def polycom_model(name: str, args) -> PolyComForCausalLM:
    d, layers, heads, gated = args.size
    cfg = PolyComConfig.matched(vocab_size=args.vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=gated, ffn_width_multiple=ffn_multiple(gated),
                        max_position_embeddings=args.seq_len, activation=name, tie_word_embeddings=False,
                        use_cache=False)
    model = PolyComForCausalLM(cfg)
    set_activation_backend(model, args.act_backend)
    return model


def llama_model(args) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    d, layers, heads, gated = args.size
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=d, intermediate_size=gated, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=args.seq_len,
                      hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False,
                      mlp_bias=False, use_cache=False, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def naive_polynorm_model(args) -> PolyComForCausalLM:
    """Our PolyNorm model with each activation swapped for ``OfficialPolyNorm`` (the official README's code)."""
    model = polycom_model("polynorm", args)
    for layer in model.model.layers:
        naive = OfficialPolyNorm(layer.mlp.act.eps)
        naive.load_state_dict(layer.mlp.act.state_dict())
        layer.mlp.act = naive
    return model


def activation_block(name: str, model: nn.Module):
    """(function of the FFN's up-projection output, its input shapes' last dims): the part of one FFN between
    the two projections, i.e. what the activation adds to the autograd graph."""
    if name == "llama_swiglu":
        mlp = model.model.layers[0].mlp
        w = mlp.gate_proj.out_features
        return (lambda gate, up: mlp.act_fn(gate) * up), (w, w)
    mlp = model.model.layers[0].mlp
    if mlp.gated:
        w = mlp.down_proj.in_features
        return (lambda h: mlp.act(h[..., :w]) * h[..., w:]), (2 * w,)
    return mlp.act, (mlp.down_proj.in_features,)


# ---- benchmark -----------------------------------------------------------------------------------------------
class Entry:
    def __init__(self, name, model, args, device):
        self.name, self.device = name, device
        self.model = model.to(device).train()
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.flops_params = count_parameters(self.model).matmul
        optim_cfg = SimpleNamespace(lr=3e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
                                    embedding_weight_decay=False, fused=None)
        self.optimizer = build_optimizer(self.model, optim_cfg)
        self.run = torch.compile(self.model) if args.compile else self.model
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.first_step_s = None
        self.loss = None

    def step(self, batch, autocast_dtype):
        with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = self.run(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out.loss.detach()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(entry, batch, args, device) -> float:
    """Wall time of one step; the process CPU time of the step is appended to ``entry.cpu_times``."""
    sync(device)
    cpu_start, start = time.process_time(), time.perf_counter()
    loss = entry.step(batch, args.autocast_dtype)
    sync(device)
    elapsed = time.perf_counter() - start
    entry.cpu_times.append(time.process_time() - cpu_start)
    entry.loss = float(loss)
    return elapsed


def measure_memory(entry, batch, args, device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        entry.step(batch, args.autocast_dtype)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mem_mb": peak / 2**20, "step_mem_delta_mb": (peak - base) / 2**20}
    release_memory()
    base = rss_bytes()
    with RSSSampler() as sampler:
        entry.step(batch, args.autocast_dtype)
    return {"peak_mem_mb": sampler.peak / 2**20, "step_mem_delta_mb": (sampler.peak - base) / 2**20,
            "rss_before_step_mb": base / 2**20}


def parse_size(text: str) -> tuple[int, int, int, int]:
    if text in MODEL_SIZES:
        return MODEL_SIZES[text]
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("--model-size is a preset name or 'd_model,layers,heads,gated_width'")
    return tuple(parts)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (as trainer.compile)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first (compile included)")
    parser.add_argument("--model-size", type=parse_size, default=MODEL_SIZES["cpu_small"], dest="size",
                        help=f"preset ({', '.join(MODEL_SIZES)}) or 'd_model,layers,heads,gated_width' "
                             "(default cpu_small = 256,4,4,704)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--activations", default=",".join(ACTIVATIONS),
                        help="comma-separated registry names (default: all)")
    parser.add_argument("--no-references", action="store_true", help="skip llama_swiglu and polynorm_naive")
    parser.add_argument("--act-backend", default="auto", choices=BACKENDS,
                        help="PolyNorm/PolyReLU implementation (polycom.model.activations; 'compiled' = torch.compile'd "
                             "activation kernels inside an eager model)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default on CUDA; ~27x slower on this CPU)")
    parser.add_argument("--fp32", action="store_true", help="no autocast, also on CUDA")
    parser.add_argument("--machine", default=None, help="machine label for the file names (default: CPU/GPU model)")
    parser.add_argument("--out-dir", default="experiments/benchmarks")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.activations.split(",") if n.strip()]
    for n in args.names:
        if n not in ACTIVATIONS:
            parser.error(f"unknown activation {n!r}")
    return args


def build_entries(args, device) -> list[Entry]:
    """One model (with its optimizer) per activation, then the references; each built from the same seed."""
    builders = {n: (lambda n=n: polycom_model(n, args)) for n in args.names}
    if not args.no_references:
        builders["llama_swiglu"] = lambda: llama_model(args)
        builders["polynorm_naive"] = lambda: naive_polynorm_model(args)
    entries = []
    for name, build in builders.items():
        torch.manual_seed(args.seed)
        entries.append(Entry(name, build(), args, device))
    return entries


def run_steps(entries: list[Entry], batch, args, device) -> None:
    """Warm-up one model after another (compilation happens here), then the timed steps interleaved
    round-robin, the start rotating each round."""
    for e in entries:
        start = time.perf_counter()
        for i in range(args.warmup):
            t = timed_step(e, batch, args, device)
            if i == 0:
                e.first_step_s = t
        print(f"  warm-up {e.name:15s} {time.perf_counter() - start:7.1f} s (first step {e.first_step_s or 0:.2f} s)",
              flush=True)
    for r in range(args.steps):
        for j in range(len(entries)):
            e = entries[(r + j) % len(entries)]
            e.times.append(timed_step(e, batch, args, device))


def entry_result(e: Entry, batch, args, device, peak) -> dict:
    """One model's figures: step time statistics, memory (measured here, one model at a time), saved bytes, MFU."""
    mem = measure_memory(e, batch, args, device)
    fn, widths = activation_block(e.name, e.model)
    inputs = [torch.randn(args.micro_batch, args.seq_len, w, device=device, requires_grad=True) for w in widths]
    tokens = args.micro_batch * args.seq_len
    step_s = statistics.median(e.times)
    flops_per_token = model_flops_per_token(e.flops_params, args.size[1], args.size[0], args.seq_len)
    saved = saved_bytes(fn, *inputs)
    return {
        "step_ms": step_s * 1e3,
        "tokens_per_s": tokens / step_s,
        "peak_mem_mb": mem["peak_mem_mb"],
        "saved_bytes_per_activation": saved,
        "mfu": mfu(tokens / step_s, flops_per_token, peak),
        "step_ms_min": min(e.times) * 1e3,
        "step_ms_iqr": [statistics.quantiles(e.times, n=4)[i] * 1e3 for i in (0, 2)] if len(e.times) > 1 else None,
        "step_cpu_ms": statistics.median(e.cpu_times[-len(e.times):]) * 1e3,
        "step_mem_delta_mb": mem["step_mem_delta_mb"],
        "first_step_s": e.first_step_s,
        "num_params": e.num_params,
        "num_params_flops": e.flops_params,
        "flops_per_token": flops_per_token,
        "ffn_hidden": e.model.config.intermediate_size,
        # the activation's saved bytes in units of one fp32 (batch, seq, non-gated width) tensor
        "saved_hidden_tensors": saved / (args.micro_batch * args.seq_len * nongated_width(args.size[3]) * 4),
        "loss": e.loss,
    }


def step_ratios(results: dict) -> dict:
    ratios = {}
    if "gelu" in results:
        ratios["step_vs_gelu"] = {n: r["step_ms"] / results["gelu"]["step_ms"] for n, r in results.items()}
    if "llama_swiglu" in results:
        ratios["step_vs_llama_swiglu"] = {n: results[n]["step_ms"] / results["llama_swiglu"]["step_ms"]
                                          for n in ("swiglu", "polynorm") if n in results}
    return ratios


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.autocast_dtype = torch.bfloat16 if (args.bf16 or device.type == "cuda") and not args.fp32 else None
    if args.compile:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:]))
    info = machine_info(device)
    mode = "compiled" if args.compile else "eager"
    if args.act_backend not in ("auto", "eager"):
        mode += f"-act-{args.act_backend}"
    print(f"# {mode} benchmark on {info.get('gpu', info['cpu'])}, torch {info['torch']}, "
          f"{info['torch_threads']} threads; load average {info.get('loadavg_start')}", flush=True)

    peak = measure_cpu_peak_flops(refresh=True) if device.type == "cpu" else device_peak_flops(device)
    print(f"peak FLOP/s used for MFU: {peak / 1e9:.1f} G" if peak else "peak FLOP/s unknown: no MFU", flush=True)

    entries = build_entries(args, device)
    gen = torch.Generator().manual_seed(args.seed)
    batch = torch.randint(0, args.vocab, (args.micro_batch, args.seq_len), generator=gen).to(device)
    run_steps(entries, batch, args, device)
    results = {e.name: entry_result(e, batch, args, device, peak) for e in entries}
    if device.type == "cpu":
        info["process_max_rss_mb"] = max_rss_bytes() / 2**20
    if hasattr(os, "getloadavg"):
        info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    info["peak_flops"] = peak

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": info,
        "command": command,
        "compiled": bool(args.compile),
        "config": {"d_model": args.size[0], "layers": args.size[1], "heads": args.size[2],
                   "gated_width": args.size[3], "seq_len": args.seq_len, "micro_batch": args.micro_batch,
                   "vocab": args.vocab, "steps": args.steps, "warmup": args.warmup, "act_backend": args.act_backend,
                   "autocast": str(args.autocast_dtype) if args.autocast_dtype else None},
        "activations": {n: r for n, r in results.items() if n not in REFERENCES},
        **{n: results[n] for n in REFERENCES if n in results},
        "ratios": step_ratios(results),
    }
    text = render_markdown(report)
    print(text)
    if not args.no_write:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{report['date']}-{args.machine or machine_label(device)}-{mode}"
        (out / f"{stem}.md").write_text(text)
        (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
        print(f"wrote {out / stem}.md and .json")
    return report


def render_markdown(report: dict) -> str:
    m, c = report["machine"], report["config"]
    mode = "torch.compile" if report["compiled"] else "eager"
    rows = {**report["activations"], **{n: report[n] for n in REFERENCES if n in report}}
    vs_gelu = report["ratios"].get("step_vs_gelu", {})
    cuda = str(m.get("device", "")).startswith("cuda")
    peak_source = ("datasheet dense bf16 peak, polycom.train.metrics" if cuda else "measured fp32 matmul peak")
    if os.environ.get("POLYCOM_PEAK_FLOPS"):
        peak_source = "$POLYCOM_PEAK_FLOPS"
    lines = [
        f"# Training-step benchmark, {mode} ({report['date']})",
        "",
        f"Machine: {m.get('gpu') or m['cpu']}, {m['cpus']} CPUs, torch {m['torch']} with {m['torch_threads']} "
        f"threads, Python {m['python']}, {m['platform']}. Load average (1/5/15 min) at start "
        f"{m.get('loadavg_start')}, at end {m.get('loadavg_end')}.",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Model: d_model {c['d_model']}, {c['layers']} layers, {c['heads']} heads, SwiGLU width {c['gated_width']} "
        f"(non-gated {nongated_width(c['gated_width'])}), vocab {c['vocab']}, untied embeddings; micro-batch "
        f"{c['micro_batch']} x {c['seq_len']} tokens, fp32{', ' + c['autocast'] + ' autocast' if c['autocast'] else ''}; "
        f"PolyCom activation backend '{c['act_backend']}'. "
        f"Step = forward + backward + clip + AdamW; median of {c['steps']} steps after {c['warmup']} warm-up steps, "
        "models interleaved round-robin. MFU against "
        + (f"{m['peak_flops'] / 1e9:.1f} GFLOP/s ({peak_source})." if m.get("peak_flops") else "no peak."),
        "",
        f"| model | params | step ms (median) | IQR ms | min ms | vs GELU | CPU ms/step | tokens/s | MFU | "
        f"{'peak allocated MB' if cuda else 'peak RSS MB'} | "
        "step Δ MB | saved by one activation (MB, x hidden) | first step s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        iqr = f"{r['step_ms_iqr'][0]:.0f}–{r['step_ms_iqr'][1]:.0f}" if r.get("step_ms_iqr") else ""
        ratio = f"{vs_gelu[name]:.3f}" if name in vs_gelu else ""
        lines.append(
            f"| {name} | {r['num_params']:,} | {r['step_ms']:.1f} | {iqr} | {r['step_ms_min']:.1f} | {ratio} | "
            f"{r['step_cpu_ms']:.0f} | {r['tokens_per_s']:,.0f} | "
            f"{r['mfu'] * 100:.1f}% | {r['peak_mem_mb']:.0f} | {r['step_mem_delta_mb']:.0f} | "
            f"{r['saved_bytes_per_activation'] / 2**20:.1f} ({r['saved_hidden_tensors']:.2f}) | "
            f"{r['first_step_s'] or 0:.2f} |")
    vs_llama = report["ratios"].get("step_vs_llama_swiglu", {})
    if vs_llama:
        lines += ["", "Ours vs transformers' Llama (same size, SwiGLU): "
                  + ", ".join(f"{n} / llama_swiglu = {v:.3f}" for n, v in vs_llama.items()) + "."]
    lines += [
        "",
        "Notes: 'vs GELU' compares medians. CPU ms/step is the process CPU time of a step (all threads; OpenMP "
        "spin-waits included), less sensitive than wall time to other jobs on the cores. Peak RSS is the process-wide resident set sampled every 1 ms during one step of that model (all "
        "models live in the process, so it includes the others' parameters and optimizer state); step Δ is the rise "
        "of RSS during that step over the RSS just before it (after `malloc_trim`), i.e. that step's activations "
        "and temporaries (CUDA: `torch.cuda.max_memory_allocated` during one step, and its rise over the memory "
        "allocated before it). 'saved by one activation' is what autograd keeps between the two FFN projections of one "
        "layer (`saved_tensors_hooks`, once per storage, parameters excluded); x hidden = in units of one fp32 "
        "(batch, seq, non-gated width) tensor. SwiGLU keeps its fused [gate|up] projection output and silu(gate).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

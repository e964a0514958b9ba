"""The pieces of ``scripts/gpu_check.sh`` (one prepared check of this project on one GPU), and its report.

Each piece runs in its own process (the shell script puts each under ``timeout``) and writes one JSON file:

    python scripts/gpu_check.py bench  --json F -- <scripts/benchmark.py arguments>
    python scripts/gpu_check.py paper  --json F [--steps 3] [--run-dir D] -- <train.py overrides>
    python scripts/gpu_check.py sync   --json F [--model moe_cpu_small]
    python scripts/gpu_check.py liger  --json F [--collect-only]
    python scripts/gpu_check.py report --work DIR --out-dir DIR [--label L] [--copy-to DIR]

- ``bench``: ``scripts/benchmark.py`` (training-step tokens/s, MFU, peak memory of each activation), in process.
- ``paper``: a few steps of the real training loop (``polycom.train.trainer.train``) with the given overrides, one
  micro-batch per step (``trainer.global_batch_size`` = ``trainer.micro_batch_size``: the peak does not depend on
  the accumulation count), no downstream evaluation, no export, and the checkpoint writes skipped (a 1B model and
  its AdamW state are ~15 GB to hash and write; they do not change the training step's peak); reports
  ``torch.cuda.max_memory_allocated()`` beside ``scripts/estimate_memory.py``'s ``peak_bytes_per_gpu`` for the
  same overrides.
- ``sync``: one MoE training step through ``polycom.train.step.train_step`` (bf16 autocast on CUDA) under
  ``torch.cuda.set_sync_debug_mode("warn")``, after one warm-up step; counts the host-device synchronisations
  and names the Python lines that caused them (``train_step`` documents one per step: the finite check).
- ``liger``: whether ``liger_kernel`` imports (and Liger's PolyNorm is found by ``polycom.model.activations``),
  then ``pytest tests/test_liger.py`` (its CUDA test compares real Liger with our PolyNorm).
- ``report``: the summary table of every piece the shell ran (the ``pieces`` file in ``--work``), with timeouts and
  crashes from the ``<piece>.rc`` files; writes ``<date>-gpu-check-<label>.md`` and ``.json`` into ``--out-dir``.
  Exit status 1 when a piece failed or timed out.

A piece's status: ``ok``; ``unavailable`` (something it needs is missing here -- named in its summary; not a
failure of the code under test); ``failed``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_json(path: str | Path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, default=str))


def gib(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ---- bench ---------------------------------------------------------------------------------------------------------
def piece_bench(args) -> dict:
    bench = load_script("benchmark")
    sys.argv[0] = "scripts/benchmark.py"  # the command the report records
    report = bench.main([*args.rest, "--no-write"])
    acts = report["activations"]
    parts = [f"{name} {r['tokens_per_s']:,.0f} tok/s, MFU {r['mfu'] * 100:.1f}%" for name, r in acts.items()]
    c = report["config"]
    size = f"d{c['d_model']}/L{c['layers']}, {c['micro_batch']}x{c['seq_len']}, vocab {c['vocab']}"
    return {"status": "ok", "summary": f"{size}: " + "; ".join(parts), "report": report,
            "markdown": bench.render_markdown(report)}


# ---- paper ---------------------------------------------------------------------------------------------------------
def _override_value(overrides: list[str], key: str) -> str | None:
    for o in overrides:
        if o.split("=", 1)[0].lstrip("+~") == key and "=" in o:
            return o.split("=", 1)[1]
    return None


class Estimator:
    """``scripts/estimate_memory.py --world-size N --json F <overrides>`` in a subprocess (CPU work, started before the
    GPU run so the two overlap); ``result()`` is its JSON, or why there is none."""

    def __init__(self, overrides: list[str], world_size: int, work: Path):
        script = REPO / "scripts" / "estimate_memory.py"
        self.out = work / "estimate.json"
        self.cmd = [sys.executable, str(script), "--world-size", str(world_size), "--json", str(self.out), *overrides]
        self.proc = None if not script.exists() else subprocess.Popen(
            self.cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float = 60) -> dict:
        if self.proc is None:
            return {"error": "scripts/estimate_memory.py not found"}
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return {"error": f"estimate_memory.py still running after the run + {timeout:.0f} s", "command": self.cmd}
        if self.proc.returncode not in (0, 1) or not self.out.exists():  # 1: "does not fit", with its JSON
            return {"error": f"estimate_memory.py exited {self.proc.returncode}: {err.strip()[-1500:]}",
                    "command": self.cmd}
        return {**json.loads(self.out.read_text()), "command": " ".join(self.cmd[1:])}


def piece_paper(args) -> dict:
    import torch

    from polycom.train import checkpoint
    from polycom.train.build import CONFIGS, compose_config

    overrides = list(args.rest)
    experiment = _override_value(overrides, "experiment")
    if experiment and not (CONFIGS / "experiment" / f"{experiment}.yaml").exists():
        return {"status": "unavailable", "summary": f"configs/experiment/{experiment}.yaml not found"}
    base = compose_config(overrides)
    tc = base.trainer
    steps = args.steps
    overrides += [f"trainer.max_steps={steps}", f"trainer.global_batch_size={tc.micro_batch_size}",
                  f"eval.interval={steps}", f"eval.val_tokens={tc.seq_len}", "eval.downstream=[]",
                  "trainer.save_hf=false", "trainer.progress_bar=false", "trainer.log_interval=1", "logger=none",
                  # the experiment's warmup (e.g. 620M tokens) is longer than these few steps; memory does not depend on it
                  "schedule.warmup_tokens=null", "schedule.warmup_fraction=null", "schedule.warmup_steps=1"]
    cfg = compose_config(overrides)
    work = Path(args.run_dir)
    work.mkdir(parents=True, exist_ok=True)
    estimator = Estimator(overrides, 1, work)

    saves = []
    checkpoint.save_checkpoint = lambda accelerator, run_dir, step, *a, **k: saves.append(step)  # see docstring
    cuda = torch.cuda.is_available() and cfg.trainer.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    from polycom.train.trainer import train

    started = time.time()
    try:
        summary = train(cfg, work / "run")
    except Exception as err:  # an out-of-memory error is a finding: keep the peak reached and the estimate
        import traceback

        traceback.print_exc()
        peak = torch.cuda.max_memory_allocated() if cuda else None
        estimate = estimator.result()
        return {"status": "failed", "summary": f"{type(err).__name__}: {str(err)[:300]} (max_memory_allocated "
                f"{gib(peak)} when it failed; estimate {gib(estimate.get('peak_bytes_per_gpu'))})",
                "overrides": overrides, "estimate": estimate, "max_memory_allocated": peak}
    seconds = time.time() - started
    estimate = estimator.result()
    measured = torch.cuda.max_memory_allocated() if cuda else None
    reserved = torch.cuda.max_memory_reserved() if cuda else None
    records = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines() if line]
    last = records[-1] if records else {}
    predicted = estimate.get("peak_bytes_per_gpu")
    ratio = measured / predicted if measured and predicted else None
    m = cfg.model
    shape = (f"d{m.hidden_size}/L{m.num_hidden_layers}, {summary['num_params'] / 1e6:,.1f}M params, vocab "
             f"{summary['vocab_size']}, micro-batch {cfg.trainer.micro_batch_size} x {cfg.trainer.seq_len}")
    text = (f"{shape}: max_memory_allocated {gib(measured)} vs estimate {gib(predicted)}"
            + (f" (measured/estimate {ratio:.2f})" if ratio else "")
            + (f"; estimator: {estimate['error'][:200]}" if "error" in estimate else "")
            + f"; {summary['steps']} steps in {seconds:.0f} s (checkpoint writes skipped: {len(saves)})"
            + (f"; last step {last['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in last else "")
            + (f", MFU {last['mfu'] * 100:.1f}%" if isinstance(last.get("mfu"), float) and last["mfu"] == last["mfu"]
               else ""))
    return {"status": "ok", "summary": text, "overrides": overrides, "steps": summary["steps"],
            "train_seconds": seconds, "max_memory_allocated": measured, "max_memory_reserved": reserved,
            "estimate": estimate, "measured_over_estimate": ratio, "final_train_loss": summary.get("final_train_loss"),
            "last_metrics": last, "checkpoint_saves_skipped_at_steps": saves,
            "trainer": dict(cfg.trainer), "model": {k: v for k, v in dict(m).items()}}


# ---- sync ----------------------------------------------------------------------------------------------------------
def piece_sync(args) -> dict:
    import torch

    from polycom.train.build import build_model, compose_config
    from polycom.train.optim import build_optimizer
    from polycom.train.step import train_step
    from polycom.train.parallel import build_accelerator

    cuda = torch.cuda.is_available()
    cfg = compose_config([f"model={args.model}", "logger=none", f"trainer.seq_len={args.seq_len}",
                          f"trainer.micro_batch_size={args.micro_batch}", "trainer.compile=false",
                          f"trainer.device={'cuda' if cuda else 'cpu'}",
                          f"trainer.mixed_precision={'bf16' if cuda else 'no'}"])
    accelerator = build_accelerator(cfg.trainer, cfg.parallel)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=args.vocab)
    if not model.config.is_moe:
        return {"status": "failed", "summary": f"model={args.model} is not a mixture of experts"}
    optimizer = build_optimizer(model, cfg.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.micro_batch, args.seq_len), generator=gen) for _ in range(2)]
    train_step(model, optimizer, accelerator, batches, cfg.trainer.grad_clip)  # warm-up: lazy inits, first allocations
    if cuda:
        torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            result = train_step(model, optimizer, accelerator, batches, cfg.trainer.grad_clip)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where = Counter(f"{_short_path(w.filename)}:{w.lineno}" for w in syncs)
    plain = accelerator.unwrap_model(model)
    params = sum(p.numel() for p in plain.parameters())
    head = (f"model={args.model} ({params / 1e6:.1f}M params, {plain.config.num_experts} experts), 2 micro-batches "
            f"of {args.micro_batch}x{args.seq_len}, loss {float(result.lm_loss):.3f}")
    if not cuda:
        return {"status": "ok", "summary": f"{head}; no CUDA: the step ran, sync debug mode not applicable",
                "sync_warnings": None, "where": {}}
    lines = ", ".join(f"{k} x{v}" for k, v in where.most_common())
    return {"status": "ok", "summary": f"{head}: {len(syncs)} synchronising call(s)" + (f" at {lines}" if lines else ""),
            "sync_warnings": len(syncs), "where": dict(where), "messages": sorted({str(w.message) for w in syncs}),
            "other_warnings": sorted({str(w.message)[:200] for w in caught if w not in syncs})}


def _short_path(filename: str) -> str:
    path = Path(filename)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        parts = path.parts
        return str(Path(*parts[parts.index("site-packages") + 1:])) if "site-packages" in parts else filename


# ---- liger ---------------------------------------------------------------------------------------------------------
def piece_liger(args) -> dict:
    import torch

    from polycom.model.activations import _liger_polynorm_function

    out = {"cuda": torch.cuda.is_available()}
    try:
        import importlib.metadata

        import liger_kernel  # noqa: F401

        out["liger_kernel"] = importlib.metadata.version("liger-kernel")
    except Exception as err:  # noqa: BLE001 -- any import failure means "unavailable"
        out["liger_kernel"] = None
        out["liger_import_error"] = f"{type(err).__name__}: {err}"
    out["liger_polynorm_found"] = _liger_polynorm_function() is not None
    test = REPO / "tests" / "test_liger.py"
    if not test.exists():
        return {**out, "status": "unavailable", "summary": "tests/test_liger.py not found"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(test.relative_to(REPO))]
    if args.collect_only:
        cmd.append("--collect-only")
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    tail = done.stdout.strip().splitlines()
    out["pytest_command"] = " ".join(cmd[1:])
    out["pytest_rc"] = done.returncode
    out["pytest_outcomes"] = [line for line in tail if re.match(r"(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", line)]
    out["pytest_last_line"] = tail[-1] if tail else done.stderr.strip()[-300:]
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|xfailed|deselected)",
                                                     out["pytest_last_line"]))
    out["pytest_counts"] = counts
    liger = (f"liger-kernel {out['liger_kernel']}" if out["liger_kernel"] else
             "liger-kernel UNAVAILABLE (" + out["liger_import_error"][:120] + ")")
    if args.collect_only:
        status = "ok" if done.returncode == 0 else "failed"
        return {**out, "status": status, "summary": f"{liger}; collected only: {out['pytest_last_line']}"}
    if done.returncode not in (0, 5):
        status = "failed"
    elif not out["liger_kernel"] or not out["cuda"]:
        status = "unavailable"  # the parity test skipped: it needs both
    else:
        status = "ok" if counts.get("passed") and not counts.get("skipped") else "failed"
    why = "" if status != "unavailable" else " -- NOT compared with real Liger: " + (
        "no CUDA" if not out["cuda"] else "liger-kernel missing (carry its wheel, see gpu_check.sh --fetch-wheels)")
    return {**out, "status": status, "summary": f"{liger}; pytest tests/test_liger.py: {out['pytest_last_line']}{why}"}


# ---- report --------------------------------------------------------------------------------------------------------
TITLES = {"bench_cpu_small": "benchmark cpu_small", "bench_gpt2_small": "benchmark gpt2_small",
          "paper": "paper model, a few steps", "sync": "MoE step, sync debug", "liger": "Liger parity"}


def collect(work: Path) -> list[dict]:
    names = [n for n in (work / "pieces").read_text().split() if n] if (work / "pieces").exists() else []
    pieces = []
    for name in names:
        rc_file, js = work / f"{name}.rc", work / f"{name}.json"
        rc = int(rc_file.read_text().strip()) if rc_file.exists() else None
        seconds = float((work / f"{name}.seconds").read_text()) if (work / f"{name}.seconds").exists() else None
        limit = (work / f"{name}.limit").read_text().strip() if (work / f"{name}.limit").exists() else "?"
        piece = json.loads(js.read_text()) if js.exists() else {}
        if rc in (124, 137):
            piece.update(status="failed", summary=f"TIMED OUT after {limit} s")
        elif not js.exists():
            piece.update(status="failed", summary=f"crashed (exit {rc}) before writing its result")
        elif rc != 0 and piece.get("status") == "ok":
            piece.update(status="failed", summary=f"exit {rc} after: {piece.get('summary', '')}")
        log = work / f"{name}.log"
        if piece.get("status") == "failed" and log.exists():
            piece["log_tail"] = log.read_text(errors="replace").splitlines()[-25:]
        pieces.append({"piece": name, "title": TITLES.get(name, name), "rc": rc, "seconds": seconds,
                       "limit_s": limit, **piece})
    return pieces


def render(pieces: list[dict], meta: dict) -> str:
    lines = [f"# GPU check, {meta['date']}{' (DRY RUN on CPU: tiny settings, no GPU figures)' if meta['dry_run'] else ''}",
             "", f"Machine: {meta['gpu'] or 'no GPU'}; torch {meta['torch']} (CUDA {meta['cuda_version']}), "
             f"Python {meta['python']}, {meta['cpus']} CPUs. Total {meta['total_seconds']:.0f} s.", "",
             f"Command: `{meta['command']}`", "",
             "| piece | status | s (limit) | result |", "|---|---|---:|---|"]
    for p in pieces:
        secs = f"{p['seconds']:.0f} ({p['limit_s']})" if p.get("seconds") is not None else f"? ({p['limit_s']})"
        summary = str(p.get("summary", "")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {p['title']} | {p.get('status', '?').upper()} | {secs} | {summary} |")
    for p in pieces:
        lines += ["", f"## {p['title']} ({p['piece']})", ""]
        if p.get("markdown"):
            lines += [p["markdown"].replace("\n# ", "\n### ").lstrip("# ").strip()]
        for key in ("overrides", "estimate", "measured_over_estimate", "where", "messages", "pytest_command",
                    "pytest_outcomes", "liger_kernel", "liger_import_error"):
            if p.get(key) not in (None, [], {}):
                lines.append(f"- {key}: `{json.dumps(p[key], default=str)[:2000]}`")
        if p.get("log_tail"):
            lines += ["", "Log tail:", "", "```", *p["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def piece_report(args) -> int:
    import torch

    work = Path(args.work)
    pieces = collect(work)
    cuda = torch.cuda.is_available()
    meta = {"date": time.strftime("%Y-%m-%d"), "dry_run": args.dry_run,
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
            "cuda_version": torch.version.cuda, "python": platform.python_version(), "cpus": os.cpu_count(),
            "command": args.command or "scripts/gpu_check.sh",
            "total_seconds": float((work / "total.seconds").read_text()) if (work / "total.seconds").exists() else
            sum(p["seconds"] or 0 for p in pieces)}
    smi = work / "nvidia-smi.txt"
    if smi.exists():
        meta["nvidia_smi"] = smi.read_text().strip()
    text = render(pieces, meta)
    label = args.label
    if not label:
        name = meta["gpu"] or ("dry-run-" + platform.machine())
        label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{meta['date']}-gpu-check-{label}"
    stem.with_suffix(".md").write_text(text)
    write_json(stem.with_suffix(".json"), {"meta": meta, "pieces": pieces})
    # the summary table last, where a terminal (or a tail of the log) shows it
    table_end = text.index("\n## ") if "\n## " in text else len(text)
    print("\n" + text[:table_end].rstrip() + "\n")
    print(f"wrote {stem}.md and .json")
    if args.copy_to:
        dest = Path(args.copy_to)
        dest.mkdir(parents=True, exist_ok=True)
        for suffix in (".md", ".json"):
            shutil.copy(stem.with_suffix(suffix), dest / stem.with_suffix(suffix).name)
        print(f"copied them to {dest}")
    failed = [p["piece"] for p in pieces if p.get("status") == "failed"]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed or not pieces else 0


# ---- command line --------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="piece", required=True)
    for name in ("bench", "paper", "sync", "liger"):
        p = sub.add_parser(name)
        p.add_argument("--json", required=True, help="where this piece writes its result")
        if name == "paper":
            p.add_argument("--steps", type=int, default=3)
            p.add_argument("--run-dir", required=True, help="scratch folder for the run")
        if name == "sync":
            p.add_argument("--model", default="moe_cpu_small")
            p.add_argument("--seq-len", type=int, default=256)
            p.add_argument("--micro-batch", type=int, default=8)
            p.add_argument("--vocab", type=int, default=8192)
        if name == "liger":
            p.add_argument("--collect-only", action="store_true", help="collect tests/test_liger.py, run nothing")
        p.add_argument("rest", nargs=argparse.REMAINDER, help="after --: benchmark.py arguments / train.py overrides")
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--out-dir", required=True)
    r.add_argument("--label", default=None, help="file-name label (default: the GPU's name)")
    r.add_argument("--copy-to", default=None, help="also copy the .md and .json here")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--command", default=None, help="the command line to record")
    args = parser.parse_args(argv)
    if args.piece == "report":
        return piece_report(args)
    args.rest = [a for a in args.rest if a != "--"]
    started = time.time()
    try:
        result = {"bench": piece_bench, "paper": piece_paper, "sync": piece_sync, "liger": piece_liger}[args.piece](args)
    except Exception as err:  # the report shows it; the traceback is in this piece's log
        import traceback

        traceback.print_exc()
        result = {"status": "failed", "summary": f"{type(err).__name__}: {str(err)[:300]}"}
    result["seconds_in_python"] = time.time() - started
    write_json(args.json, result)
    print(f"[{args.piece}] {result['status']}: {result['summary']}", flush=True)
    return 0 if result["status"] != "failed" else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

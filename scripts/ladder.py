"""The compute ladder: what a ladder costs, the lr rule from its grid, and the fits and report of its runs.

    python scripts/ladder.py plan experiment=ladder_cpu --tokens-per-s r1=20000,r2=15000,r3=11000,r4=8000
    python scripts/ladder.py plan experiment=ladder_gpu --mfu 0.4 --gpu "NVIDIA H100 80GB HBM3"
    python scripts/ladder.py lr <grid runs> [more] --ladder cpu [--json lr.json]
    python scripts/ladder.py lr --table lr.json --overrides r2      # ladder.lr.<activation>=<lr> of rung r2
    python scripts/ladder.py fit <study dir> [--runs <more runs>] [--baseline swiglu] [--replicates 1000]
    python scripts/ladder.py report <study dir> [same options]

``plan`` composes the experiment's sweep (its ``hydra.sweeper.params``; ``key=a,b`` arguments replace them), builds
each rung's model on the meta device and prints N, FLOPs per token (``polycom.model.stats``), each budget's compute
and hours: from measured tokens/s per rung, or from an assumed MFU of a GPU's datasheet peak (stated in the output).

``lr`` reads lr-grid runs (``hparams_search=ladder_cpu_lr_grid`` / ``ladder_gpu_lr_grid``), takes each activation's
best lr at the smallest and the largest rung and prints the rule's lr at every rung of
``configs/ladder/<ladder>_r*.yaml`` (``--overrides <rung>``: the ``ladder.lr.<activation>=<lr>`` overrides of that
rung, for a shell script).

``fit`` reads the study's runs (``<study>/runs``, plus the folders listed in ``<study>/ladder_runs.txt`` and
``--runs``), fits L(C) per budget line and L(N, D), and writes ``<study>/ladder_fit.json`` (per activation: each
cell's compute, loss, multiplier and its 95% interval; each line's trend with its p-value; the extrapolated gap),
or into ``--out-dir`` (a report against another ``--baseline`` beside the main one).
``report`` also writes ``ladder.md``, ``loss_vs_compute.png`` and ``multiplier_vs_compute.png``, and with lr-grid runs
(``<study>/lr-grid/runs`` or ``--grid``) the multiplier's sensitivity to lr. The conventions are in
``polycom/report/ladder.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from polycom.report import ladder


def _rungs_of(name: str | None, roots: list[Path]) -> dict:
    """The rung files of ``name``, or of the ladder the runs name in their config (``ladder.name``); {} if none."""
    from polycom.report.runs import find_run_dirs, run_config

    if name is None:
        for run_dir in find_run_dirs(roots):
            name = run_config(run_dir).get("ladder.name")
            if name:
                break
    return ladder.ladder_rungs(name) if name else {}


def cmd_fit(args, report: bool) -> None:
    study = args.study
    roots = ladder.study_roots(study, args.runs)
    rungs = _rungs_of(args.ladder, roots)
    rows = ladder.load_ladder_runs(roots, rungs)
    if not rows:
        raise SystemExit(f"no complete run under {', '.join(map(str, roots))}")
    result = ladder.fit_ladder(rows, args.baseline, replicates=args.replicates, seed=args.seed,
                               chinchilla_replicates=args.chinchilla_replicates)
    out = args.out_dir or study
    out.mkdir(parents=True, exist_ok=True)
    ladder.write_fit(result, out / ladder.FIT_FILE)
    text = ladder.markdown(result)
    written = [out / ladder.FIT_FILE]
    if report:
        from polycom.report.ladder_plots import plot_loss_vs_compute, plot_multiplier_vs_compute

        grid_dirs = args.grid or [d for d in [study / "lr-grid" / "runs"] if d.is_dir()]
        if grid_dirs:
            grid_rows = ladder.load_ladder_runs(grid_dirs, rungs)
            text += "\n" + ladder.sensitivity_markdown(ladder.lr_sensitivity(grid_rows, result, rows), args.baseline)
        (out / "ladder.md").write_text(text)
        plot_loss_vs_compute(result, out / "loss_vs_compute.png")
        plot_multiplier_vs_compute(result, out / "multiplier_vs_compute.png")
        written += [out / "ladder.md", out / "loss_vs_compute.png", out / "multiplier_vs_compute.png"]
    print(text)
    print(f"{len(rows)} runs -> " + ", ".join(map(str, written)))


def cmd_lr(args) -> None:
    if args.table:
        table = json.loads(args.table.read_text())
    else:
        rungs = _rungs_of(args.ladder, args.grid)
        if not rungs:
            raise SystemExit("name the ladder (--ladder cpu): the rule needs every rung's N")
        table = ladder.lr_table(ladder.load_ladder_runs(args.grid, rungs), rungs, refine=args.refine)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    if args.overrides:
        missing = [act for act, e in table["activations"].items() if "lr" not in e]
        if missing:
            print(f"no rule lr for {', '.join(missing)} (a grid rung missing): they keep their rung file's lr",
                  file=sys.stderr)
        print(" ".join(f"ladder.lr.{act}={e['lr'][args.overrides]:g}" for act, e in table["activations"].items()
                       if "lr" in e))
        return
    print(ladder.lr_markdown(table))


def _sweep(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The fixed overrides and the sweep: the experiment's ``hydra.sweeper.params``, an entry replaced by an override
    of its key (``ladder.budget=t5``); other ``key=a,b`` overrides join the sweep."""
    from polycom.train.build import compose_config

    cfg = compose_config([o for o in overrides if "," not in o], return_hydra_config=True)
    sweep = {k: str(v).split(",") for k, v in (cfg.hydra.sweeper.params or {}).items()}
    fixed = []
    for override in overrides:
        key, _, value = override.partition("=")
        if "," in value or key in sweep:
            sweep[key] = value.split(",")
        else:
            fixed.append(override)
    return fixed, sweep


def cmd_plan(args) -> None:
    import torch

    from polycom.model import PolyComForCausalLM
    from polycom.model.stats import count_parameters, model_flops_per_token
    from polycom.train.build import compose_config, model_config
    from polycom.train.metrics import cuda_peak_flops_by_name

    fixed, sweep = _sweep(args.overrides)
    rung_names, budgets = sweep.pop("ladder", [None]), sweep.pop("ladder.budget", [None])
    acts, seeds = sweep.pop("activation", ["swiglu"]), sweep.pop("seed", ["0"])
    repeats = math.prod(len(v) for v in sweep.values())  # other swept keys (an lr grid's optim.lr) multiply the runs
    tps = dict(kv.split("=") for kv in args.tokens_per_s.split(",")) if args.tokens_per_s else {}
    peak = cuda_peak_flops_by_name(args.gpu) if args.gpu else None
    if args.gpu and peak is None:
        raise SystemExit(f"no datasheet peak for {args.gpu!r} (polycom/train/metrics.py)")
    total = 0.0
    print(f"| rung | N (non-emb.) | params | FLOPs/token | budget | tokens | compute/run | hours/run | runs | hours |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rung in rung_names:
        for budget in budgets:
            cells = []
            for act in acts:
                over = fixed + [f"activation={act}"] + ([f"ladder={rung}"] if rung else []) + (
                    [f"ladder.budget={budget}"] if budget else [])
                cfg = compose_config(over)
                bpe = -(-cfg.tokenizer.vocab_size // 64) * 64  # padded as the trainer pads it
                vocab = args.vocab or (bpe if cfg.tokenizer.kind == "bpe" else 50304)
                with torch.device("meta"):
                    counts = count_parameters(PolyComForCausalLM(model_config(cfg, vocab_size=vocab)))
                fpt = model_flops_per_token(counts.matmul, cfg.model.num_hidden_layers, cfg.model.hidden_size,
                                            cfg.trainer.seq_len)
                tokens = cfg.trainer.max_tokens
                h = ladder.hours(fpt * tokens, tokens=tokens, tokens_per_s=float(tps[cfg.ladder.rung])
                                 if cfg.ladder.rung in tps else None, mfu=args.mfu, peak_flops=peak)
                cells.append((counts, fpt, tokens, h + args.overhead_s / 3600))
            counts, fpt, tokens, _ = cells[0]
            head = 0 if cfg.model.tie_word_embeddings else vocab * cfg.model.hidden_size
            n = counts.total - counts.embedding - head
            hours = sum(c[3] for c in cells) * len(seeds) * repeats
            total += hours
            runs = len(acts) * len(seeds) * repeats
            print(f"| {cfg.ladder.rung} | {n / 1e6:.3f}M | {counts.total / 1e6:.3f}M | {fpt:.3g} | {cfg.ladder.budget} "
                  f"| {tokens:,} | {fpt * tokens:.3g} | {cells[0][3]:.3g} | {runs} | {hours:.3g} |")
    basis = (f"measured tokens/s {args.tokens_per_s}" if tps else
             f"MFU {args.mfu} of {args.gpu}'s dense bf16 peak {peak:.3g} FLOP/s (an assumption)")
    swept = "".join(f" x {len(v)} {k}" for k, v in sweep.items())
    print(f"\n{total:.1f} hours in all ({len(acts)} activations x {len(seeds)} seeds{swept} per cell; vocabulary "
          f"{vocab}; "
          f"hours from {basis}; + {args.overhead_s:g} s per run for start, validation and checkpoints)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("fit", "report"):
        p = sub.add_parser(name, help=f"{name} a study's runs")
        p.add_argument("study", type=Path)
        p.add_argument("--runs", type=Path, action="append", default=[], help="more run folders (repeatable)")
        p.add_argument("--grid", type=Path, action="append", default=[],
                       help="lr-grid run folders (repeatable; default <study>/lr-grid/runs)")
        p.add_argument("--ladder", default=None, help="rung files configs/ladder/<ladder>_r*.yaml (default: the "
                                                      "runs' ladder.name)")
        p.add_argument("--baseline", default="swiglu", help="the activation multipliers are against")
        p.add_argument("--out-dir", type=Path, default=None, help="where to write (default: the study folder; "
                                                                  "another baseline's report in a subfolder)")
        p.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
        p.add_argument("--chinchilla-replicates", type=int, default=200, help="bootstrap replicates of L(N, D)")
        p.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed")
    p = sub.add_parser("lr", help="the lr rule from lr-grid runs")
    p.add_argument("grid", type=Path, nargs="*")
    p.add_argument("--ladder", default=None)
    p.add_argument("--refine", action="store_true", help="each best lr refined by a parabola in log lr")
    p.add_argument("--json", type=Path, default=None, help="write the table here")
    p.add_argument("--table", type=Path, default=None, help="read a table written by --json instead of the grid")
    p.add_argument("--overrides", default=None, metavar="RUNG", help="print that rung's ladder.lr.* overrides")
    p = sub.add_parser("plan", help="what a ladder costs")
    p.add_argument("overrides", nargs="+", help="train.py overrides, e.g. experiment=ladder_gpu seed=0,1")
    p.add_argument("--tokens-per-s", default=None, help="measured, per rung: r1=20000,r2=15000")
    p.add_argument("--mfu", type=float, default=None, help="assumed model FLOPs utilisation")
    p.add_argument("--gpu", default=None, help="device name for the datasheet peak, e.g. 'NVIDIA H100 80GB HBM3'")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary (default: the BPE size padded to 64, or "
                                                           "50304 for a pretrained tokenizer)")
    p.add_argument("--overhead-s", type=float, default=0.0, help="seconds per run besides training")
    args = parser.parse_args(argv)
    try:
        if args.command in ("fit", "report"):
            cmd_fit(args, report=args.command == "report")
        elif args.command == "lr":
            cmd_lr(args)
        else:
            if not args.tokens_per_s and not (args.mfu and args.gpu):
                parser.error("plan needs --tokens-per-s, or --mfu and --gpu")
            cmd_plan(args)
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())

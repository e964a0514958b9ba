"""A compute ladder's runs -> cells -> fits, compute multipliers against a baseline, their trend, an extrapolation,
the lr rule, tables and ``ladder_fit.json``. Torch-free (numpy/scipy); the laws are in ``polycom.report.scaling``.

Conventions (stated in every output):

- N: non-embedding parameters (input embedding and LM head excluded, Kaplan et al. 2020), the count budgets are
  per (``t20``: 20 tokens per N).
- Compute: training FLOPs = tokens x FLOPs per token, FLOPs per token = ``6 * N_matmul + 12 * L * d * T``
  (``polycom.model.stats.model_flops_per_token``: PaLM's count, Chowdhery et al. 2022 app. B), N_matmul = the
  parameters in a matmul per token (the LM head included, the input embedding not), counted per activation from the
  run's own model, attention over the full sequence T (no causal halving); elementwise work (the activation itself,
  norms, softmax) is not counted. A run's compute is that of a run planned for its budget from the start.
- A cell: one (rung, budget, activation); its loss is the mean final validation loss over its seeds.
- L(C) is fitted per budget line (the rungs at one tokens-per-N budget), on cell means. The compute multiplier of an
  activation at a cell is the compute the baseline's L(C) of that line needs to reach the activation's loss,
  divided by the activation's compute there (> 1: the activation is worth more compute than it used). A second
  estimate pins the baseline's L(C) to its cells (``multiplier_vs_cells``, ``pinned_inverse``): where the baseline's
  own cell sits off its L(C), every activation's curve multiplier at that rung carries the offset; the pinned
  estimate does not, but it carries the baseline cells' seed noise.
- Intervals: 95% percentile intervals of a bootstrap over seeds (``scaling.bootstrap_cells``); the trend's p-value
  inverts that interval (H0: slope 0). On runs generated from known laws with 3 seeds per cell they hold the truth
  95% of the time (experiments/2026-12-07-ladder-cpu/coverage_check.py).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from scipy.optimize import brentq

from polycom.report import scaling
from polycom.report.runs import find_run_dirs, load_curve, run_config
from polycom.report.tables import ordered_activations
from polycom.runs import DEFAULT_ORDER, SUMMARY

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUNS_FILE = "ladder_runs.txt"  # extra run folders of a study, one a line, relative to the study folder
FIT_FILE = "ladder_fit.json"
# The paper's dense 1B model trained on 250B tokens (Zhuo et al. 2025): PolyNorm 2.17, SwiGLU 2.19 final training
# loss. Its compute in this module's convention: configs/model/paper_dense_1b.yaml (d 2048, 24 layers, SwiGLU width
# 5504), vocabulary 50304, sequence 4096: N = 1.214e9, N_matmul = 1.317e9, 6 * N_matmul + 12 * 24 * 2048 * 4096 =
# 1.032e10 FLOPs per token, x 250e9 tokens = 2.58e21 (6 * N * D alone: 1.8e21; "~2e21"). Checked against the model
# by tests/test_ladder.py.
PAPER_POINT = {"label": "paper 1B / 250B tokens", "params": 1.214e9, "tokens": 250e9, "compute": 2.58e21,
               "losses": {"polynorm": 2.17, "swiglu": 2.19}}


def flops_per_token(num_params_matmul: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """``polycom.model.stats.model_flops_per_token`` (the same formula; this package may not import the model)."""
    return 6.0 * num_params_matmul + 12.0 * num_layers * hidden_size * seq_len


# ---- the ladder's rungs (configs/ladder/<name>_r*.yaml) -----------------------------------------------------------
@dataclass(frozen=True)
class Rung:
    name: str
    dims: tuple  # (hidden_size, layers, heads, gated intermediate size)
    params: int
    budgets: dict


def ladder_rungs(ladder: str, configs: Path = CONFIGS) -> dict[str, Rung]:
    """The rungs of ``configs/ladder/<ladder>_r*.yaml``, smallest first (by N)."""
    rungs = {}
    for path in sorted(configs.glob(f"ladder/{ladder}_r*.yaml")):
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        m, spec = cfg["model"], cfg["ladder"]
        rungs[spec["rung"]] = Rung(spec["rung"], (m["hidden_size"], m["num_hidden_layers"], m["num_attention_heads"],
                                                  m["intermediate_size"]), int(spec["params"]), dict(spec["budgets"]))
    if not rungs:
        raise ValueError(f"no rung files configs/ladder/{ladder}_r*.yaml")
    return dict(sorted(rungs.items(), key=lambda kv: kv[1].params))


# ---- runs ---------------------------------------------------------------------------------------------------------
def activation_label(activation: str, order) -> str:
    """The activation, with ``-r<order>`` when its PolyCom order is not the default (as in run names)."""
    return activation if order in (None, DEFAULT_ORDER) else f"{activation}-r{order}"


def _non_embedding(summary: dict) -> int:
    model = summary["model"]
    head = 0 if model.get("tie_word_embeddings") else summary["vocab_size"] * model["hidden_size"]
    return summary["num_params"] - summary["num_params_embedding"] - head


def _median_tokens_per_s(run_dir: Path) -> float:
    """Median of the run's logged tokens/s, its first record left out (warmup, compilation)."""
    values = [v for _, v in load_curve(run_dir, "tokens_per_s")][1:]
    return statistics.median(values) if values else math.nan


def load_ladder_runs(roots: list[Path], rungs: dict[str, Rung] | None = None) -> list[dict]:
    """One row per complete run below ``roots``: activation, seed, rung, budget, N, tokens, compute, loss, lr,
    tokens/s. The rung comes from the run's ``ladder.rung``, else from the rung whose model it has (``rungs``), else
    from its shape (``d128-L4-h4-w352``); the budget from the rung's table by token count, else the run's
    ``ladder.budget``, else ``t<tokens per N>``. Two runs of one cell and seed are refused, naming both."""
    by_dims = {r.dims: r for r in (rungs or {}).values()}
    rows, seen = [], {}
    for run_dir in find_run_dirs(roots):
        summary = json.loads((run_dir / SUMMARY).read_text())
        config = run_config(run_dir)
        m = summary["model"]
        dims = (m["hidden_size"], m["num_hidden_layers"], m["num_attention_heads"], m["intermediate_size"])
        rung = by_dims.get(dims)
        rung_name = config.get("ladder.rung") or (rung.name if rung else "d{}-L{}-h{}-w{}".format(*dims))
        rung = rung or (rungs or {}).get(rung_name)
        tokens, n = int(summary["tokens"]), _non_embedding(summary)
        budget = next((b for b, t in (rung.budgets if rung else {}).items() if t == tokens and b != "grid"), None)
        budget = budget or (config.get("ladder.budget") if config.get("ladder.budget") not in (None, "grid") else None)
        budget = budget or f"t{tokens / n:.3g}"
        seq_len = config.get("trainer.seq_len") or m["max_position_embeddings"]
        fpt = flops_per_token(summary["num_params_matmul"], m["num_hidden_layers"], m["hidden_size"], seq_len)
        row = {"activation": activation_label(summary["activation"], summary.get("activation_order")),
               "seed": int(summary["seed"]), "rung": rung_name, "budget": budget,
               "params": n, "tokens": tokens, "flops_per_token": fpt, "compute": fpt * tokens,
               "loss": summary["val_loss"], "lr": config.get("optim.lr"),
               "tokens_per_s": _median_tokens_per_s(run_dir), "run_dir": str(run_dir)}
        key = (row["rung"], row["budget"], row["activation"], row["seed"], row["lr"])
        if key in seen:
            raise ValueError(f"two runs of {row['activation']} seed {row['seed']} at {row['rung']} {row['budget']} "
                             f"lr {row['lr']}: {seen[key]} and {run_dir}; remove one")
        seen[key] = run_dir
        rows.append(row)
    return rows


def study_roots(study: Path, extra: list[Path] = ()) -> list[Path]:
    """``<study>/runs`` (or the study folder itself when it has no runs/), the folders listed in
    ``<study>/ladder_runs.txt`` (relative to the study), and ``extra``."""
    roots = [study / "runs" if (study / "runs").is_dir() else study]
    listed = study / RUNS_FILE
    if listed.is_file():
        for line in listed.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                path = (study / line).resolve()
                if not path.is_dir():
                    raise ValueError(f"{listed}: {line} is not a folder")
                roots.append(path)
    return roots + list(extra)


# ---- the fit ------------------------------------------------------------------------------------------------------
@dataclass
class Cells:
    """Runs grouped by (rung, budget, activation): losses by seed, and per cell N, tokens, compute, tokens/s, lr."""

    losses: dict = field(default_factory=dict)  # (rung, budget, activation) -> {seed: loss}
    info: dict = field(default_factory=dict)  # (rung, budget, activation) -> {params, tokens, compute, ...}

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "Cells":
        cells = cls()
        for row in rows:
            key = (row["rung"], row["budget"], row["activation"])
            by_seed = cells.losses.setdefault(key, {})
            if row["seed"] in by_seed:
                raise ValueError(f"{key} has two runs of seed {row['seed']} (different lr?); a ladder has one lr per "
                                 "cell: keep the grid's other runs out of the study's runs")
            by_seed[row["seed"]] = row["loss"]
            info = cells.info.setdefault(key, {"params": row["params"], "tokens": row["tokens"],
                                               "compute": row["compute"], "tokens_per_s": [], "lr": set()})
            info["tokens_per_s"].append(row["tokens_per_s"])
            info["lr"].add(row["lr"])
        return cells

    def means(self) -> dict:
        return {key: float(np.mean(list(v.values()))) for key, v in self.losses.items()}

    def lines(self) -> dict[str, list[str]]:
        """budget -> its rungs, ordered by compute."""
        out: dict = {}
        for rung, budget, _ in self.losses:
            out.setdefault(budget, set()).add(rung)
        return {b: sorted(rs, key=lambda r: min(i["compute"] for k, i in self.info.items() if k[0] == r))
                for b, rs in sorted(out.items(), key=lambda kv: _budget_order(kv[0]))}


def _budget_order(name: str):
    try:
        return (0, float(name.lstrip("t")), name)
    except ValueError:
        return (1, 0.0, name)


def _line_points(cells: Cells, means: dict, budget: str, act: str, rungs: list[str]):
    keys = [(r, budget, act) for r in rungs if (r, budget, act) in means]
    return keys, np.array([cells.info[k]["compute"] for k in keys]), np.array([means[k] for k in keys])


def _fit_lines(cells: Cells, means: dict, lines: dict, acts: list[str]) -> dict:
    """{(budget, act): PowerLaw} for every line with >= 3 distinct computes of that activation."""
    fits = {}
    for budget, rungs in lines.items():
        for act in acts:
            keys, c, y = _line_points(cells, means, budget, act, rungs)
            if np.unique(c).size >= 3:
                fits[(budget, act)] = scaling.fit_power_law(c, y)
    return fits


def _multipliers(cells: Cells, means: dict, fits: dict, lines: dict, acts: list[str], baseline: str) -> dict:
    """{(rung, budget, act): multiplier} against the baseline's L(C) of the cell's line."""
    out = {}
    for budget, rungs in lines.items():
        law = fits.get((budget, baseline))
        if law is None:
            continue
        for act in acts:
            for rung in rungs:
                key = (rung, budget, act)
                if key in means:
                    out[key] = float(scaling.compute_multiplier(law, means[key], cells.info[key]["compute"]))
    return out


def pinned_inverse(law: scaling.PowerLaw, compute, loss, target: float) -> tuple[float, bool]:
    """The compute at which ``law`` pinned to the points (``compute``, ``loss``) reaches ``target``, and whether that
    lies beyond the points. Pinned: the law plus its residual at the points, interpolated linearly in ln C between
    them and held constant beyond them, so it passes through every point and keeps the law's curvature (straight
    lines between the points would not: on a convex L(C) they read multipliers high between points and low beyond
    the last, a downward trend of their own). inf where the target is at or below the pinned law's floor."""
    order = np.argsort(compute)
    c, y = np.asarray(compute, dtype=float)[order], np.asarray(loss, dtype=float)[order]
    if c.size == 0:
        return math.nan, False
    x, resid = np.log(c), y - law(c)
    if target >= y[0] or target <= y[-1]:  # beyond the points: the law shifted by the nearest end's residual
        end = 0 if target >= y[0] else -1
        return float(law.inverse(target - resid[end])), not y[-1] <= target <= y[0]
    if target in y:  # on a point (the baseline's own cell), where rounding could hide the sign change
        return float(c[np.flatnonzero(y == target)[0]]), False
    i = next(j for j in range(x.size - 1) if min(y[j], y[j + 1]) <= target <= max(y[j], y[j + 1]))

    def gap(t):  # the pinned law minus the target, at ln C = t
        return float(law(math.exp(t))) + np.interp(t, x, resid) - target

    return float(math.exp(brentq(gap, x[i], x[i + 1]))), False


def _pinned_multipliers(cells: Cells, means: dict, fits: dict, lines: dict, acts: list[str], baseline: str) -> dict:
    """{(rung, budget, act): (multiplier, beyond)} against the baseline's L(C) of the cell's line pinned to its cells
    (``pinned_inverse``)."""
    out = {}
    for budget, rungs in lines.items():
        law = fits.get((budget, baseline))
        if law is None:
            continue
        _, c_base, y_base = _line_points(cells, means, budget, baseline, rungs)
        for act in acts:
            for rung in rungs:
                key = (rung, budget, act)
                if key in means:
                    c, beyond = pinned_inverse(law, c_base, y_base, means[key])
                    out[key] = (c / cells.info[key]["compute"], beyond)
    return out


def _trends(cells: Cells, mult: dict, lines: dict, acts: list[str]) -> dict:
    out = {}
    for budget, rungs in lines.items():
        for act in acts:
            keys = [(r, budget, act) for r in rungs if (r, budget, act) in mult]
            if len(keys) >= 2:
                out[(budget, act)] = scaling.trend([cells.info[k]["compute"] for k in keys], [mult[k] for k in keys])
    return out


def fit_ladder(rows: list[dict], baseline: str = "swiglu", replicates: int = 1000, seed: int = 0,
               target: dict = PAPER_POINT, gap_activation: str = "polynorm", chinchilla_replicates: int = 200) -> dict:
    """Everything ``ladder_fit.json`` holds (see the module docstring for the conventions)."""
    cells = Cells.from_rows(rows)
    acts = ordered_activations([{"activation": a} for _, _, a in cells.losses])
    if baseline not in acts:
        raise ValueError(f"no run of the baseline {baseline!r}; activations: {', '.join(acts)}")
    lines = cells.lines()
    means = cells.means()
    fits = _fit_lines(cells, means, lines, acts)
    if not any(a == baseline for _, a in fits):
        raise ValueError(f"the baseline {baseline!r} has no budget line with >= 3 rungs of distinct compute: nothing "
                         f"to fit L(C) to (lines: {', '.join(f'{b}: {len(r)} rungs' for b, r in lines.items())})")
    mult = _multipliers(cells, means, fits, lines, acts, baseline)
    trends = _trends(cells, mult, lines, acts)
    vs_cells = _pinned_multipliers(cells, means, fits, lines, acts, baseline)
    trends_vs_cells = _trends(cells, {k: m for k, (m, _) in vs_cells.items()}, lines, acts)
    c_max = max(i["compute"] for i in cells.info.values())
    grid = np.geomspace(min(i["compute"] for i in cells.info.values()) / 2, c_max * 2, 60)

    # bootstrap over seeds
    flat = {((r, b), a): v for (r, b, a), v in cells.losses.items()}
    boot_mult, boot_trend, boot_curve, boot_fit, boot_gap = {}, {}, {}, {}, {}
    boot_cells, boot_trend_cells = {}, {}
    for sample in scaling.bootstrap_cells(flat, seed, replicates):
        m = {(r, b, a): v for ((r, b), a), v in sample.items()}
        f = _fit_lines(cells, m, lines, acts)
        mu = _multipliers(cells, m, f, lines, acts, baseline)
        mc = {k: v for k, (v, _) in _pinned_multipliers(cells, m, f, lines, acts, baseline).items()}
        for estimate, boot, boot_t in ((mu, boot_mult, boot_trend), (mc, boot_cells, boot_trend_cells)):
            for key, v in estimate.items():
                boot.setdefault(key, []).append(v)
            for key, v in _trends(cells, estimate, lines, acts).items():
                boot_t.setdefault(key, []).append(v)
        for key, law in f.items():
            boot_curve.setdefault(key, []).append(law(grid))
            boot_fit.setdefault(key, []).append((law.E, law.A, law.alpha))
            boot_gap.setdefault(key, []).append(float(law(target["compute"])))

    def interval(samples):
        return list(scaling.percentile_interval(samples))

    result = {
        "conventions": {
            "params": "N = non-embedding parameters (input embedding and LM head excluded)",
            "compute": "training FLOPs = tokens x (6 N_matmul + 12 L d T): N_matmul = parameters in a matmul per token "
                       "(LM head in, input embedding out), attention over the full sequence T; elementwise ops not "
                       "counted; per activation from its own model",
            "loss": "final validation loss, mean over seeds per (rung, budget, activation)",
            "multiplier": f"compute {baseline}'s L(C) of the same budget line needs to reach the activation's loss, "
                          "divided by the activation's compute",
            "multiplier_vs_cells": f"the same against {baseline}'s L(C) pinned to its cells (plus its residual at "
                                   "each cell, interpolated linearly in ln C and held beyond the end cells: "
                                   "vs_cells_beyond): free of the baseline's cell-to-curve offsets, subject to its "
                                   "cells' seed noise",
            "wall_clock_multiplier": f"multiplier x (activation's FLOP/s / {baseline}'s FLOP/s at that cell, from "
                                     "the runs' median logged tokens/s): time over time, assuming the baseline keeps "
                                     "its measured FLOP rate",
            "intervals": f"95% percentile intervals of {replicates} bootstrap replicates over seeds "
                         "(scaling.bootstrap_cells: each run's deviation from its cell's mean, scaled to unbiased "
                         "variance and widened to t quantiles of the pooled degrees of freedom, pooled over an "
                         "activation's cells, drawn paired by seed across the activations of a rung and budget, from "
                         "random streams keyed by cell so that a run added to one activation leaves the others' "
                         "draws); trend p-value: two-sided, by inverting the bootstrap interval of the slope",
            "trend": "least-squares slope of ln(multiplier) on ln(compute) over a budget line's rungs, per decade "
                     "of compute = slope x ln(10)",
        },
        "baseline": baseline,
        "budget_lines": lines,
        "activations": {},
    }
    for act in acts:
        entry = {"fits": {}, "cells": [], "trend": {}, "trend_vs_cells": {}}
        for budget, rungs in lines.items():
            law = fits.get((budget, act))
            if law is not None:
                cis = np.array(boot_fit.get((budget, act), [])).reshape(-1, 3)
                entry["fits"][budget] = {**law.to_dict(), "E_ci95": interval(cis[:, 0]), "A_ci95": interval(cis[:, 1]),
                                         "alpha_ci95": interval(cis[:, 2]), "points": len(_line_points(
                                             cells, means, budget, act, rungs)[0])}
            for rung in rungs:
                key = (rung, budget, act)
                if key not in means:
                    continue
                info, losses = cells.info[key], cells.losses[key]
                cell = {"rung": rung, "budget": budget, "params": info["params"], "tokens": info["tokens"],
                        "compute": info["compute"], "loss": means[key], "loss_by_seed": losses,
                        "seeds": len(losses), "lr": sorted(x for x in info["lr"] if x is not None),
                        "loss_std": float(np.std(list(losses.values()), ddof=1)) if len(losses) > 1 else None,
                        "tokens_per_s": float(np.nanmedian(info["tokens_per_s"]))}
                if key in mult:
                    cell["multiplier"] = mult[key]
                    cell["multiplier_ci95"] = interval(boot_mult.get(key, []))
                    base = (rung, budget, baseline)
                    if base in cells.info:
                        ratio = (info["compute"] / info["tokens"] * cell["tokens_per_s"]) / (
                            cells.info[base]["compute"] / cells.info[base]["tokens"]
                            * float(np.nanmedian(cells.info[base]["tokens_per_s"])))
                        cell["wall_clock_multiplier"] = mult[key] * ratio
                        cell["wall_clock_multiplier_ci95"] = [x * ratio for x in cell["multiplier_ci95"]]
                    baseline_law = fits.get((budget, baseline))
                    cell["beyond_baseline_data"] = bool(baseline_law is not None and np.isfinite(
                        mult[key]) and mult[key] * info["compute"] > max(
                        cells.info[(r, budget, baseline)]["compute"] for r in rungs if (r, budget, baseline) in
                        cells.info))
                if key in vs_cells:
                    cell["multiplier_vs_cells"], cell["vs_cells_beyond"] = vs_cells[key]
                    cell["multiplier_vs_cells_ci95"] = interval(boot_cells.get(key, []))
                entry["cells"].append(cell)
            for name, point, boot, estimate in (("trend", trends, boot_trend, mult),
                                                 ("trend_vs_cells", trends_vs_cells, boot_trend_cells, vs_cells)):
                if (budget, act) in point and act != baseline:
                    samples = boot.get((budget, act), [])
                    slope = point[(budget, act)]
                    entry[name][budget] = {
                        "slope": slope, "slope_ci95": interval(samples),
                        "p_value": scaling.bootstrap_p_value(samples),
                        "per_decade": slope * math.log(10) if not math.isnan(slope) else math.nan,
                        "replicates_used": int(np.sum(~np.isnan(np.asarray(samples, dtype=float)))),
                        "rungs": len([r for r in rungs if (r, budget, act) in estimate])}
        result["activations"][act] = entry

    # the extrapolated gap (L(C) of each line; L(N, D) where the budgets allow)
    result["extrapolation"] = _extrapolation(cells, means, fits, boot_gap, lines, target, gap_activation, baseline,
                                             c_max, rows, seed, chinchilla_replicates)
    result["curves"] = {"compute": grid.tolist(), "bands": {
        f"{b}|{a}": {"fit": fits[(b, a)](grid).tolist(),
                     "low": np.quantile(np.array(v), 0.025, axis=0).tolist(),
                     "high": np.quantile(np.array(v), 0.975, axis=0).tolist()}
        for (b, a), v in boot_curve.items() if (b, a) in fits}}
    return result


def _extrapolation(cells, means, fits, boot_gap, lines, target, act, baseline, c_max, rows, seed, replicates) -> dict:
    out = {"target": target, "activation": act, "baseline": baseline,
           "decades_beyond_data": math.log10(target["compute"] / c_max), "max_compute_in_data": c_max, "lines": {}}
    for budget in lines:
        if (budget, act) in fits and (budget, baseline) in fits:
            gap = float(fits[(budget, act)](target["compute"]) - fits[(budget, baseline)](target["compute"]))
            samples = np.array(boot_gap[(budget, act)]) - np.array(boot_gap[(budget, baseline)])
            out["lines"][budget] = {"gap": gap, "gap_ci95": list(scaling.percentile_interval(samples)),
                                    act: float(fits[(budget, act)](target["compute"])),
                                    baseline: float(fits[(budget, baseline)](target["compute"]))}
    chin = {}
    for name in (act, baseline):
        pts = [(cells.info[k]["params"], cells.info[k]["tokens"], means[k]) for k in means if k[2] == name]
        try:
            chin[name] = scaling.fit_chinchilla(*zip(*pts)) if pts else None
        except ValueError as err:
            out["chinchilla"] = {"skipped": f"{name}: {err}"}
            return out
    if all(chin.values()):
        point = lambda law: float(law(target["params"], target["tokens"]))  # noqa: E731
        flat = {((r, b), a): v for (r, b, a), v in cells.losses.items() if a in (act, baseline)}
        samples = []
        for sample in scaling.bootstrap_cells(flat, seed, replicates):
            gaps = []
            for name in (act, baseline):
                pts = [(cells.info[(r, b, a)]["params"], cells.info[(r, b, a)]["tokens"], v)
                       for ((r, b), a), v in sample.items() if a == name]
                try:
                    gaps.append(point(scaling.fit_chinchilla(*zip(*pts), start=chin[name])))
                except scaling.FitError:  # a replicate whose refit did not converge: nan, left out of the interval
                    gaps.append(math.nan)
            samples.append(gaps[0] - gaps[1])
        out["chinchilla"] = {"fits": {name: law.to_dict() for name, law in chin.items()},
                             "gap": point(chin[act]) - point(chin[baseline]),
                             "gap_ci95": list(scaling.percentile_interval(samples)),
                             "replicates_used": int(np.sum(~np.isnan(np.asarray(samples, dtype=float)))),
                             act: point(chin[act]), baseline: point(chin[baseline]),
                             "params_beyond_data": target["params"] / max(c["params"] for c in cells.info.values()),
                             "tokens_beyond_data": target["tokens"] / max(c["tokens"] for c in cells.info.values())}
    return out


def write_fit(result: dict, path: Path) -> None:
    def clean(x):
        if isinstance(x, float):
            return x if math.isfinite(x) else ("inf" if x > 0 else "-inf") if not math.isnan(x) else None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, np.integer)):
            return clean(x.item())
        return x

    path.write_text(json.dumps(clean(result), indent=1) + "\n")


# ---- tables -------------------------------------------------------------------------------------------------------
def _g(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}g}"


def _ci(ci) -> str:
    return "–" if not ci or ci[0] is None else f"[{_g(ci[0])}, {_g(ci[1])}]"


def markdown(result: dict) -> str:
    base = result["baseline"]
    acts = list(result["activations"])
    lines = result["budget_lines"]
    conventions = "; ".join(f"**{k}**: {v}" for k, v in result["conventions"].items())
    out = ["# Compute ladder", "", f"Conventions: {conventions}", ""]
    out += ["## L(C) = E + A·C^-α per budget line", "", "| budget | activation | E | A | α | rungs |",
            "|---|---|---|---|---|---|"]
    for budget in lines:
        for act in acts:
            f = result["activations"][act]["fits"].get(budget)
            if f:
                bound = " ‡" if f.get("alpha_at_bound") else ""
                out.append(f"| {budget} | {act} | {_g(f['E'], 4)} {_ci(f['E_ci95'])} | {_g(f['A'])} | "
                           f"{_g(f['alpha'])}{bound} {_ci(f['alpha_ci95'])} | {f['points']} |")
    if any(f.get("alpha_at_bound") for a in acts for f in result["activations"][a]["fits"].values()):
        lo, hi = scaling.ALPHA_RANGE
        out += ["", f"‡ α at an end of its range [{lo:g}, {hi:g}]: the bound, not the data, set it (a flat or "
                    "rising line, or too little curvature); that line's E, A and extrapolation follow from it."]
    out += ["", *markdown_by_rung(result).splitlines()]
    out += ["", *markdown_by_rung(result, "multiplier_vs_cells").splitlines()]
    out += ["", f"## Per rung: loss, compute multiplier vs {base} (95% CI), wall-clock multiplier", ""]
    rungs = []
    for budget_rungs in lines.values():
        rungs += [r for r in budget_rungs if r not in rungs]
    for rung in rungs:
        out += [f"### {rung}", "",
                "| activation | budget | N | tokens | compute | loss (seeds) | multiplier [95% CI] | "
                "wall-clock | tokens/s |", "|---|---|---|---|---|---|---|---|---|"]
        for act in acts:
            for c in result["activations"][act]["cells"]:
                if c["rung"] != rung:
                    continue
                flag = " †" if c.get("beyond_baseline_data") else ""
                out.append(f"| {act} | {c['budget']} | {c['params']:,} | {c['tokens']:,} | {c['compute']:.3g} | "
                           f"{c['loss']:.4f} ({c['seeds']}) | {_g(c.get('multiplier'))} {_ci(c.get('multiplier_ci95'))}"
                           f"{flag} | {_g(c.get('wall_clock_multiplier'))} | {_g(c['tokens_per_s'], 4)} |")
        out.append("")
    out += [f"† the compute {base} would need lies beyond its largest run of that line (its L(C) extrapolated).", ""]
    out += ["## Does the multiplier change with compute?", "",
            "| activation | budget | slope of ln M on ln C | per decade | 95% CI (slope) | p (slope = 0) | rungs | "
            f"per decade, {base}'s L(C) pinned (p) |", "|---|---|---|---|---|---|---|---|"]
    for act in acts:
        for budget, t in result["activations"][act]["trend"].items():
            tc = result["activations"][act].get("trend_vs_cells", {}).get(budget)
            out.append(f"| {act} | {budget} | {_g(t['slope'])} | {_g(t['per_decade'])} | {_ci(t['slope_ci95'])} | "
                       f"{_g(t['p_value'], 2)} | {t['rungs']} | "
                       + (f"{tc['per_decade']:+.2f} ({_g(tc['p_value'], 2)})" if tc else "–") + " |")
    out += ["", *markdown_extrapolation(result).splitlines()]
    return "\n".join(out) + "\n"


def markdown_by_rung(result: dict, estimate: str = "multiplier") -> str:
    """Per budget line, each activation's multiplier (95% CI) at every rung and its trend: the ladder at a glance.
    ``estimate``: ``multiplier`` (against the baseline's L(C)) or ``multiplier_vs_cells`` (that L(C) pinned to its
    cells)."""
    base = result["baseline"]
    vs_cells = estimate == "multiplier_vs_cells"
    trend_key = "trend_vs_cells" if vs_cells else "trend"
    against = f"{base}'s L(C) pinned to its cells († beyond them)" if vs_cells else base
    out = [f"## Compute multiplier vs {against} by rung (95% CI), and its trend", ""]
    for budget, rungs in result["budget_lines"].items():
        computes = {c["rung"]: c["compute"] for c in result["activations"][base]["cells"] if c["budget"] == budget}
        out += [f"### budget {budget}", "",
                "| activation | " + " | ".join(f"{r} ({computes.get(r, math.nan):.2g} FLOPs)" for r in rungs)
                + " | per decade of compute (p) |", "|---|" + "---|" * (len(rungs) + 1)]
        for act, entry in result["activations"].items():
            if act == base:
                continue
            cells = {c["rung"]: c for c in entry["cells"] if c["budget"] == budget and estimate in c}
            t = entry.get(trend_key, {}).get(budget)
            trend = f"{t['per_decade']:+.2f} ({_g(t['p_value'], 2)})" if t else "–"
            out.append(f"| {act} | " + " | ".join(
                f"{_g(cells[r][estimate])} {_ci(cells[r][estimate + '_ci95'])}"
                + (" †" if cells[r].get("vs_cells_beyond") and vs_cells else "") if r in cells else "–"
                for r in rungs) + f" | {trend} |")
        out.append("")
    return "\n".join(out)


def markdown_extrapolation(result: dict) -> str:
    """The extrapolated gap at the target point, each law's row, and why L(N, D) is missing or undetermined."""
    ex = result["extrapolation"]
    tgt = ex["target"]
    out = [f"## Extrapolation to the {tgt['label']} ({tgt['compute']:.3g} FLOPs)", "",
            f"The largest compute in the data is {ex['max_compute_in_data']:.3g} FLOPs: the target lies "
            f"**{ex['decades_beyond_data']:.1f} decades** beyond it, on other data and another tokenizer than the "
            f"paper's, so the numbers below say what these fits imply, not what a 1B model would show.", "",
            f"| law | {ex['activation']} − {ex['baseline']} at the target | 95% CI | paper |", "|---|---|---|---|"]
    paper = tgt.get("losses", {})  # the paper's gap for this pair, where it reports both activations
    paper_gap = (f"{paper[ex['activation']] - paper[ex['baseline']]:+.2f}"
                 if ex["activation"] in paper and ex["baseline"] in paper else "– (not reported)")
    for budget, e in ex["lines"].items():
        out.append(f"| L(C), budget line {budget} | {e['gap']:+.4f} | {_ci(e['gap_ci95'])} | {paper_gap} |")
    ch = ex.get("chinchilla", {})
    if "gap" in ch:
        out.append(f"| L(N, D) at N = {tgt['params']:.3g}, D = {tgt['tokens']:.3g} ({ch['params_beyond_data']:.0f}x "
                   f"the largest N, {ch['tokens_beyond_data']:.0f}x the most tokens) | {ch['gap']:+.4f} | "
                   f"{_ci(ch['gap_ci95'])} | {paper_gap} |")
    elif ch:
        out.append(f"| L(N, D) | not fitted: {ch['skipped']} | | |")
    bounded = {name: law["at_bounds"] for name, law in ch.get("fits", {}).items() if law.get("at_bounds")}
    if bounded:
        out += ["", "L(N, D) is not determined by these data: the fit pushed " + " and ".join(
            f"{name}'s {', '.join(params)}" for name, params in bounded.items()) + " to the end of the search range "
            "(E < 0.01, an exponent at 0 or 3), so its extrapolation follows the bounds. Fits: " + "; ".join(
            f"{name} E = {law['E']:.3g}, A = {law['A']:.3g}, α = {law['alpha']:.3g}, B = {law['B']:.3g}, "
            f"β = {law['beta']:.3g}" for name, law in ch["fits"].items()) + "."]
    return "\n".join(out) + "\n"


# ---- the lr rule --------------------------------------------------------------------------------------------------
def best_lr(lrs, losses, refine: bool = False) -> tuple[float, bool]:
    """The grid's best lr and whether it is at the grid's end (``(lr, at_edge)``). ``refine``: the vertex of a
    parabola in log(lr) through the best and its two neighbours instead, when it is inside the grid and the parabola
    is convex. Off by default: the ladder's runs then train at lrs the grid ran, so a grid's run can be a cell and
    the BabyLM study's runs (at their grid's best lr) match the rule at the largest CPU rung."""
    order = np.argsort(lrs)
    x, y = np.log(np.asarray(lrs, dtype=float)[order]), np.asarray(losses, dtype=float)[order]
    i = int(np.argmin(y))
    if i in (0, x.size - 1) or not refine:
        return float(np.exp(x[i])), i in (0, x.size - 1)
    a, b, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
    vertex = -b / (2 * a) if a > 0 else x[i]
    return float(np.exp(np.clip(vertex, x[i - 1], x[i + 1]))), False


def lr_rule(n_small: float, lr_small: float, n_large: float, lr_large: float):
    """lr(N) = lr_small * (N / n_small) ** gamma, gamma = ln(lr_large / lr_small) / ln(n_large / n_small): the
    geometric interpolation (and extrapolation) in N between the grid's optima at the smallest and largest rung."""
    gamma = math.log(lr_large / lr_small) / math.log(n_large / n_small)
    return (lambda n: lr_small * (n / n_small) ** gamma), gamma


def lr_table(grid_rows: list[dict], rungs: dict[str, Rung], refine: bool = False) -> dict:
    """From grid runs (one seed, several lrs, at the smallest and the largest rung): per activation the best lr at
    those rungs and the rule's lr at every rung of ``rungs``."""
    order = list(rungs)
    small, large = order[0], order[-1]
    out = {"rule": "lr_a(N) = lr_a(N_1) * (N / N_1) ** gamma_a, gamma_a = ln(lr_a(N_K) / lr_a(N_1)) / ln(N_K / N_1): "
                   "the grid's best lr at the smallest and the largest rung, interpolated geometrically in N",
           "rungs": {r: rungs[r].params for r in order}, "activations": {}}
    acts = ordered_activations(grid_rows)
    for act in acts:
        best = {}
        for rung in (small, large):
            pts = [(row["lr"], row["loss"]) for row in grid_rows if row["activation"] == act and row["rung"] == rung]
            if len({lr for lr, _ in pts}) >= 2:
                lr, edge = best_lr(*zip(*pts), refine=refine)
                best[rung] = {"lr": lr, "at_grid_edge": edge, "grid": sorted(pts)}
        entry = {"grid_best": best}
        if len(best) == 2:
            rule, gamma = lr_rule(rungs[small].params, best[small]["lr"], rungs[large].params, best[large]["lr"])
            entry["gamma"] = gamma
            entry["lr"] = {r: float(f"{rule(rungs[r].params):.3g}") for r in order}
        out["activations"][act] = entry
    return out


def lr_markdown(table: dict) -> str:
    order = list(table["rungs"])
    ends = (order[0], order[-1])
    out = [f"lr rule: {table['rule']}", "",
           "| activation | " + " | ".join(f"best at {r}" for r in ends) + " | gamma | " + " | ".join(order) + " |",
           "|---|---|---|---|" + "---|" * len(order)]
    for act, e in table["activations"].items():
        best = [(f"{e['grid_best'][r]['lr']:.3g}" + (" (edge)" if e["grid_best"][r]["at_grid_edge"] else ""))
                if r in e["grid_best"] else "–" for r in ends]
        lrs = [f"{e['lr'][r]:.3g}" if "lr" in e else "–" for r in order]
        out.append(f"| {act} | " + " | ".join(best) + f" | {_g(e.get('gamma'))} | " + " | ".join(lrs) + " |")
    return "\n".join(out) + "\n"


def lr_sensitivity(grid_rows: list[dict], result: dict, rows: list[dict]) -> list[dict]:
    """The multiplier an activation would get at each lr of the grid: its grid run's loss against the baseline's
    L(C) of the same budget line (a grid at a ladder budget); at another budget, the loss gap to the baseline's best
    grid run there instead."""
    base = result["baseline"]
    fits = {b: f for b, f in result["activations"][base]["fits"].items()}
    out = []
    for row in grid_rows:
        entry = {k: row[k] for k in ("activation", "rung", "budget", "lr", "loss", "compute")}
        f = fits.get(row["budget"])
        if f is not None:
            law = scaling.PowerLaw(E=f["E"], a=f["A"], alpha=f["alpha"], c_ref=1.0)
            entry["multiplier"] = float(scaling.compute_multiplier(law, row["loss"], row["compute"]))
        else:
            same = [r["loss"] for r in grid_rows if r["activation"] == base and r["rung"] == row["rung"]
                    and r["budget"] == row["budget"]]
            entry["gap_to_baseline_best"] = row["loss"] - min(same) if same else math.nan
        out.append(entry)
    return out


def sensitivity_markdown(entries: list[dict], baseline: str) -> str:
    if not entries:
        return ""
    lrs = sorted({e["lr"] for e in entries})
    out = [f"## The multiplier's sensitivity to lr (grid runs, seed 0; against {baseline} at its own lr)", "",
           "Multiplier where the grid ran at a ladder budget; elsewhere (†) the loss minus the baseline's best grid "
           "loss at that rung and budget.", "",
           "| activation | rung | budget | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
           "|---|---|---|" + "---|" * len(lrs)]
    keys = sorted({(e["activation"], e["rung"], e["budget"]) for e in entries}, key=lambda k: (k[1], k[2], k[0]))
    for act, rung, budget in keys:
        cells = []
        for lr in lrs:
            e = next((e for e in entries if (e["activation"], e["rung"], e["budget"], e["lr"]) == (act, rung, budget,
                                                                                                  lr)), None)
            cells.append("" if e is None else _g(e["multiplier"]) if "multiplier" in e
                         else f"{e['gap_to_baseline_best']:+.3f} †")
        out.append(f"| {act} | {rung} | {budget} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# ---- planning: what a ladder costs ------------------------------------------------------------------------------
def hours(compute: float, *, tokens: float | None = None, tokens_per_s: float | None = None,
          mfu: float | None = None, peak_flops: float | None = None) -> float:
    """Hours of one run: from a measured tokens/s, else from an assumed MFU of a device's peak FLOP/s."""
    if tokens_per_s:
        return tokens / tokens_per_s / 3600
    if mfu and peak_flops:
        return compute / (mfu * peak_flops) / 3600
    raise ValueError("give tokens_per_s, or mfu and peak_flops")

"""Per-activation summary tables (markdown and CSV) from run rows.

Every paired test carries its corrected verdict: Holm's adjusted p over the tests of its table (the headline table;
each per-group breakdown is a table of its own) and what it says at 0.05. A task appears by its headline metric only
(``polycom.report.tasks``); the other accuracy (acc / acc_norm) stays in results.csv. The counts behind each task
(examples scored, left out, ties) get a table of their own and are never tested."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from polycom.runs import ACTIVATION_ORDER, breakdown_parts
from polycom.report.runs import variant_of, variants
from polycom.report.stats import aggregate, by_activation, holm, paired_difference
from polycom.report.tasks import COUNTS, LM_EVAL_SPLIT, TASK_MEAN, TASKS, chance, is_alternative, is_count, is_headline

# a task's per-group results (BLiMP's 13 phenomenon groups) get a table in summary.md up to this many groups;
# larger breakdowns (BLiMP's 67 paradigms, MMLU's 57 subjects) are in summary.csv and results.csv only
MAX_GROUPS_IN_MARKDOWN = 20
# "better" for the significance marks; for the layer similarity, the paper's reading (less alike layers)
LOWER_IS_BETTER = ("analysis/similarity_off_diagonal", "analysis/similarity_adjacent")


def lower_is_better(metric: str) -> bool:
    """Losses and perplexities (val_ppl, lambada/perplexity, wikitext/word_perplexity...) improve downwards."""
    name = metric.rsplit("/", 1)[-1]
    return metric in LOWER_IS_BETTER or "loss" in name or "perplexity" in name or name.endswith("ppl")


def metric_columns(rows: list[dict]) -> list[str]:
    """val_loss, val_ppl, the tasks' mean (when present), each task's headline metric and other task metrics
    (a perplexity), then the analyses; not the counts nor a task's other accuracy."""
    keys = {k for row in rows for k in row if "/" in k and not is_count(k) and not is_alternative(k)}
    keys.discard(TASK_MEAN)
    downstream = sorted(k for k in keys if not k.startswith("analysis/"))
    analysis = sorted(k for k in keys if k.startswith("analysis/"))
    mean = [TASK_MEAN] if any(TASK_MEAN in row for row in rows) else []
    return ["val_loss", "val_ppl"] + mean + downstream + analysis


def count_columns(rows: list[dict]) -> list[str]:
    return sorted({k for row in rows for k in row if is_count(k)})


def mean_tasks(rows: list[dict]) -> list[str]:
    """The tasks whose headline metric every run has (not per-group ones); the task mean averages these."""
    tasks = [t for t in TASKS if rows and all(row.get(f"{t}/{TASKS[t].headline}") is not None for row in rows)]
    return tasks if len(tasks) >= 2 else []


def with_task_mean(rows: list[dict]) -> list[dict]:
    """Each run with ``tasks_mean/acc``: the mean of its tasks' headline accuracies (``mean_tasks``), the kind of
    summary the paper gives ("average over six zero-shot tasks")."""
    tasks = mean_tasks(rows)
    if not tasks:
        return rows
    return [{**row, TASK_MEAN: sum(float(row[f"{t}/{TASKS[t].headline}"]) for t in tasks) / len(tasks)}
            for row in rows]


def ordered_activations(rows: list[dict]) -> list[str]:
    present = {row["activation"] for row in rows}
    return [a for a in ACTIVATION_ORDER if a in present] + sorted(present - set(ACTIVATION_ORDER))


def _fmt(x: float, digits: int = 4, sign: bool = False) -> str:
    """Fixed decimals; values of 1e5 and more (a tiny model's LAMBADA perplexity) in 4 significant digits."""
    if x is None or math.isnan(x):
        return "–"
    plus = "+" if sign else ""
    return f"{x:{plus}.4g}" if abs(x) >= 1e5 else f"{x:{plus}.{digits}f}"


def _fmt_p(p: float) -> str:
    """Two significant digits, so that a p-value near a corrected threshold (0.0028 against 0.0029) reads as such."""
    return "–" if p is None or math.isnan(p) else f"{p:.2g}"


def variant_label(by: list[str], values: tuple) -> str:
    return ", ".join(f"{k}={x}" for k, x in zip(by, values))


def summary_rows(rows: list[dict], baseline: str, by: list[str] = ()) -> list[dict]:
    """One row per (activation, metric) -- and per value of the ``by`` config keys, each summarized on its
    own: aggregate over seeds and the paired difference to the baseline at the same ``by`` values, with Holm's
    adjusted p (``p_holm``) and ``verdict`` over the tests of the same table. Count metrics get the aggregate only."""
    by = list(by)
    if by:
        return [{**dict(zip(by, values)), **row} for values in variants(rows, by)
                for row in summary_rows([r for r in rows if variant_of(r, by) == values], baseline)]
    rows = with_task_mean(rows)
    out = []
    for metric in count_columns(rows):
        table = by_activation(rows, metric)
        for act in ordered_activations(rows):
            if act in table:
                agg = aggregate(list(table[act].values()))
                out.append({"activation": act, "metric": metric, "n": agg.n, "mean": agg.mean, "std": agg.std,
                            "ci95_low": agg.ci95_low, "ci95_high": agg.ci95_high,
                            "min": min(table[act].values()), "max": max(table[act].values())})
    for metric in metric_columns(rows):
        table = by_activation(rows, metric)
        for act in ordered_activations(rows):
            if act not in table:
                continue
            agg = aggregate(list(table[act].values()))
            row = {"activation": act, "metric": metric, "n": agg.n, "mean": agg.mean, "std": agg.std,
                   "ci95_low": agg.ci95_low, "ci95_high": agg.ci95_high}
            if baseline in table and act != baseline:
                diff = paired_difference(table[act], table[baseline])
                row.update({"diff_vs_baseline": diff.mean_diff, "diff_ci95_low": diff.ci95_low,
                            "diff_ci95_high": diff.ci95_high, "p_value": diff.p_value, "n_pairs": diff.n})
            out.append(row)
    add_corrections(out)
    return out


def family(metric: str):
    """The table a metric's test belongs to: a task's per-group breakdown, or the headline table."""
    parts = breakdown_parts(metric)
    return parts[:2] if parts else "headline"


def add_corrections(summary: list[dict]) -> None:
    """Holm's adjusted p over each table's tests (``p_holm``) and the verdict at 0.05: ``higher`` / ``lower`` (the
    difference to the baseline is significant after correction), ``n.s.`` (it is not)."""
    tested = [r for r in summary if not math.isnan(r.get("p_value", math.nan))]
    for key in dict.fromkeys(family(r["metric"]) for r in tested):
        members = [r for r in tested if family(r["metric"]) == key]
        for row, adjusted in zip(members, holm([r["p_value"] for r in members])):
            row["p_holm"] = adjusted
            row["verdict"] = ("higher" if row["diff_vs_baseline"] > 0 else "lower") if adjusted < 0.05 else "n.s."


SUMMARY_COLUMNS = ["activation", "metric", "n", "mean", "std", "ci95_low", "ci95_high", "diff_vs_baseline",
                   "diff_ci95_low", "diff_ci95_high", "p_value", "n_pairs", "p_holm", "verdict"]


def write_summary_csv(summary: list[dict], path: Path, by: list[str] = ()) -> None:
    columns = list(by) + SUMMARY_COLUMNS
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")  # a count's min and max: markdown only
        writer.writeheader()
        writer.writerows(summary)


def markdown(summary: list[dict], baseline: str, by: list[str] = ()) -> str:
    """Without ``by``: the two tables of ``metric_tables`` for the headline metrics, then ``breakdown_tables``.
    With it: first a grid of the validation loss, a row per activation and a column per ``by`` value (the best
    value of each activation in bold), then the two tables of headline metrics for each ``by`` value."""
    by = list(by)
    headline = [r for r in summary if breakdown_parts(r["metric"]) is None and not is_count(r["metric"])]
    counts = [r for r in summary if is_count(r["metric"])]
    if not by:
        return metric_tables(headline, baseline) + counts_table(counts) + breakdown_tables(summary, baseline)
    parts = [grid_markdown(summary, by)]
    for v in variants(headline, by):
        part = [r for r in headline if variant_of(r, by) == v]
        parts.append(f"## {variant_label(by, v)}\n\n" + metric_tables(part, baseline))
    return "\n".join(parts)


def breakdown_sections(metrics, max_groups: int = MAX_GROUPS_IN_MARKDOWN) -> dict[tuple[str, str], list[str]]:
    """The per-group metrics among ``metrics`` (``blimp/phenomenon/<group>/acc``) by (task, breakdown key), for
    the breakdowns of at most ``max_groups`` groups (BLiMP's 13 phenomena, not its 67 paradigms)."""
    sections: dict[tuple[str, str], list[str]] = {}
    for metric in metrics:
        parts = breakdown_parts(metric)
        if parts:
            sections.setdefault(parts[:2], []).append(metric)
    return {key: names for key, names in sections.items() if len(group_names(names)) <= max_groups}


def group_names(metrics: list[str]) -> list[str]:
    return list(dict.fromkeys(breakdown_parts(m)[2] for m in metrics))


def breakdown_tables(summary: list[dict], baseline: str, max_groups: int = MAX_GROUPS_IN_MARKDOWN) -> str:
    """``metric_tables`` of each ``breakdown_sections`` section, one per task and breakdown key; "" for none."""
    out = []
    shown = dict.fromkeys(r["metric"] for r in summary if not is_alternative(r["metric"]))
    for (task, key), metrics in breakdown_sections(shown, max_groups).items():
        rows = [r for r in summary if r["metric"] in metrics]
        out.append(f"\n### {task} by {key} ({len(group_names(metrics))} groups)\n\n" + metric_tables(rows, baseline))
    return "".join(out)


def grid_markdown(summary: list[dict], by: list[str], metric: str = "val_loss") -> str:
    values = variants(summary, by)
    cell = {(r["activation"], variant_of(r, by)): r for r in summary if r["metric"] == metric}
    acts = list(dict.fromkeys(r["activation"] for r in summary if r["metric"] == metric))
    lines = [f"{metric} (mean ± std over seeds, n) by {', '.join(by)}; bold: each activation's best.", "",
             "| activation | " + " | ".join(variant_label(by, v) for v in values) + " | best |",
             "|---|" + "---:|" * (len(values) + 1)]
    for act in acts:
        pick = min if lower_is_better(metric) else max
        best = pick((v for v in values if (act, v) in cell), key=lambda v: cell[(act, v)]["mean"])
        cells = []
        for v in values:
            r = cell.get((act, v))
            if r is None:
                cells.append("–")
                continue
            text = _fmt(r["mean"]) + ("" if r["n"] < 2 else f" ± {_fmt(r['std'])}") + f" (n={r['n']})"
            cells.append(f"**{text}**" if v == best else text)
        lines.append(f"| {act} | " + " | ".join(cells) + f" | {variant_label(by, best)} |")
    return "\n".join(lines) + "\n"


# an FFN matrix's raw effective rank: SwiGLU's matrices are 2/3 as wide, and a wider random matrix starts higher
RAW_ERANK = ("analysis/erank_gate", "analysis/erank_up", "analysis/erank_down")


def metric_label(metric: str) -> str:
    """A metric's row label: with guessing's accuracy for a task's headline or group metric, and a warning on the
    raw effective ranks (compare activations by ``_minus_init`` / ``_over_random``, ``polycom.eval.analysis``)."""
    if metric in RAW_ERANK:
        return f"{metric} (raw: width-confounded)"
    level = chance(metric)
    return metric if level is None else f"{metric} (chance {level:.3g})"


def metric_tables(summary: list[dict], baseline: str) -> str:
    """Two tables, a row per metric and a column per activation: mean ± std [95% CI] over seeds, then the
    paired difference to the baseline (same seed) with its 95% interval, paired t-test p, and next to each p
    Holm's adjusted p over the table's tests and its verdict (``add_corrections``)."""
    metrics = list(dict.fromkeys(r["metric"] for r in summary))
    acts = list(dict.fromkeys(r["activation"] for r in summary))
    cell = {(r["activation"], r["metric"]): r for r in summary}
    seeds = [max(cell[(a, m)]["n"] for m in metrics if (a, m) in cell) for a in acts]
    header = "| metric | " + " | ".join(f"{a} (n={n})" for a, n in zip(acts, seeds)) + " |"
    lines = [header, "|---|" + "---:|" * len(acts)]
    for m in metrics:
        cells = []
        for act in acts:
            r = cell.get((act, m))
            cells.append("–" if r is None else
                         f"{_fmt(r['mean'])} ± {_fmt(r['std'])} [{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]")
        lines.append(f"| {metric_label(m)} | " + " | ".join(cells) + " |")
    others = [a for a in acts if a != baseline]
    tests = sum(1 for a in others for m in metrics if not math.isnan(cell.get((a, m), {}).get("p_value", math.nan)))
    lines += ["", f"Paired difference vs {baseline} (same seed; activation − {baseline}), "
              "mean [95% CI], paired t-test p (Holm-corrected p: verdict):", "",
              "| metric | " + " | ".join(others) + " |", "|---|" + "---:|" * len(others)]
    for m in metrics:
        cells = []
        for act in others:
            r = cell.get((act, m), {})
            if "diff_vs_baseline" not in r:
                cells.append("–")
                continue
            better = (r["diff_vs_baseline"] < 0) == lower_is_better(m)
            mark = "*" if r["p_value"] < 0.05 and better else ("†" if r["p_value"] < 0.05 else "")
            verdict = f" (Holm {_fmt_p(r['p_holm'])}: {r['verdict']})" if "p_holm" in r else ""
            interval = f"[{_fmt(r['diff_ci95_low'])}, {_fmt(r['diff_ci95_high'])}]"
            cells.append(f"{_fmt(r['diff_vs_baseline'], sign=True)} {interval} p={_fmt_p(r['p_value'])}{mark}{verdict}")
        lines.append(f"| {metric_label(m)} | " + " | ".join(cells) + " |")
    passed = sum(1 for r in summary if r.get("verdict") in ("higher", "lower"))
    caveat = (f"{tests} tests, of which about {tests * 0.05:.1f} would reach p < 0.05 by chance alone. In parentheses: "
              f"Holm's adjusted p over these {tests} tests and its verdict at 0.05, `higher` / `lower` (than "
              f"{baseline}) where the difference survives the correction, `n.s.` where it does not; {passed} of "
              f"{tests} survive (Bonferroni's threshold, the strictest step of Holm's, is p < {0.05 / tests:.2g})"
              if tests else "no test here has two seeds or more")
    lines += ["", f"`*` better than {baseline} at p < 0.05, `†` worse at p < 0.05, uncorrected: {caveat}. "
              "Values are mean ± sample std over seeds, with a t-based 95% interval."]
    if TASK_MEAN in metrics:
        tasks = [m.split("/")[0] for m in metrics if is_headline(m)]
        lines += ["", f"`{TASK_MEAN}`: per run, the mean of the headline accuracies of its {len(tasks)} tasks "
                  f"({', '.join(tasks)}); a difference of 0.01 is 1 point."]
    return "\n".join(lines) + "\n"


def counts_table(counts: list[dict]) -> str:
    """Per task, the examples behind its numbers (``polycom.report.tasks.COUNTS``): one value where every run has
    the same, else the range over runs; "" when the runs recorded none."""
    tasks = list(dict.fromkeys(r["metric"].split("/")[0] for r in counts))
    if not tasks:
        return ""

    def value(task: str, count: str) -> str:
        rows = [r for r in counts if r["metric"] == f"{task}/{count}"]
        if not rows:
            return "–"
        low, high = min(r["min"] for r in rows), max(r["max"] for r in rows)
        return f"{low:,.0f}" if low == high else f"{low:,.0f}–{high:,.0f}"

    lines = ["", "Examples behind each task's numbers (the same in every run unless a range is given):", "",
             "| task | headline | split scored | scored | left out: an answer longer than the window "
             "| malformed rows skipped | ties (counted half right) |", "|---|---|---|---:|---:|---:|---:|"]
    for task in tasks:
        info = TASKS[task]
        split = info.split + (f" (lm-eval: {LM_EVAL_SPLIT[task]})" if task in LM_EVAL_SPLIT else "")
        lines.append(f"| {task} | {info.headline} | {split} | " + " | ".join(value(task, c) for c in COUNTS) + " |")
    return "\n".join(lines) + "\n"

"""Collect finished runs (``summary.json`` + ``metrics.jsonl``) from sweep folders into one table."""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from polycom import config_diff
from polycom.runs import CONFIG, METRICS, SUMMARY, is_result_metric, read_summary, result_problem

BASE_COLUMNS = ["activation", "seed", "val_loss", "val_ppl", "tokens", "num_params", "num_params_active", "steps",
                "wall_seconds", "run_dir"]


def run_folders(roots: list[Path]) -> list[Path]:
    """Every folder below ``roots`` that a run wrote (a summary.json or a metrics.jsonl), sorted."""
    found = set()
    for root in roots:
        for name in (SUMMARY, METRICS):
            found.update(path.parent for path in Path(root).rglob(name))
    return sorted(found)


def find_run_dirs(roots: list[Path]) -> list[Path]:
    """Every run folder below ``roots`` with a result: a complete run's summary.json with a validation loss."""
    return [d for d in run_folders(roots) if result_problem(read_summary(d)) is None]


def skipped_runs(roots: list[Path]) -> list[tuple[Path, str]]:
    """The run folders below ``roots`` that ``find_run_dirs`` leaves out, each with the reason and what to do."""
    skipped = []
    for run_dir in run_folders(roots):
        problem = result_problem(read_summary(run_dir))
        if problem == "no summary.json":
            problem = "no summary.json: still running, or killed"
        if problem is not None:
            skipped.append((run_dir, f"{problem} (finish it with the same command and trainer.resume=auto)"))
    return skipped


def downstream_columns(summary: dict) -> list[str]:
    """Downstream metrics are the ``<task>/<metric>`` keys of a summary."""
    return sorted(k for k, v in summary.items() if is_result_metric(k) and isinstance(v, (int, float)))


def analysis_metrics(run_dir: Path) -> dict:
    """The paper's analyses of a run as ``analysis/<name>`` metrics when ``<run_dir>/analysis/analysis.json``
    (``scripts/analyze.py``) exists: each FFN matrix kind's effective rank averaged over layers
    (``analysis/erank_up``, ``_down``, ``_gate``), its width-fair forms where the analysis has the references
    (``analysis/erank_up_minus_init``: the change from the run's own initialisation; ``analysis/erank_up_over_random``:
    the ratio to a random matrix of the same shape; see ``polycom.eval.analysis``), and the mean cosine similarity of
    hidden states between different layers (``analysis/similarity_off_diagonal``) and adjacent ones (``_adjacent``)."""
    path = Path(run_dir) / "analysis" / "analysis.json"
    if not path.is_file():
        return {}
    analysis = json.loads(path.read_text())
    metrics = {}
    rows = analysis.get("erank", [])
    for kind in ("gate", "up", "down"):
        values = [row[kind] for row in rows if kind in row]
        if values:
            metrics[f"analysis/erank_{kind}"] = sum(values) / len(values)
        for suffix, reference, combine in (("minus_init", "init", float.__sub__),
                                           ("over_random", "random", float.__truediv__)):
            fair = [combine(float(row[kind]), float(row[f"{kind}_{reference}"])) for row in rows
                    if f"{kind}_{reference}" in row]
            if fair and len(fair) == len(values):
                metrics[f"analysis/erank_{kind}_{suffix}"] = sum(fair) / len(fair)
    similarity = analysis.get("layer_similarity", {})
    if "mean_off_diagonal" in similarity:
        metrics["analysis/similarity_off_diagonal"] = similarity["mean_off_diagonal"]
    if similarity.get("adjacent"):
        metrics["analysis/similarity_adjacent"] = sum(similarity["adjacent"]) / len(similarity["adjacent"])
    return metrics


def run_config(run_dir: Path) -> dict:
    """The run's resolved config (``config.yaml``, written by the trainer) as a flat ``{dotted.key: value}``."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    return config_diff.flatten(OmegaConf.to_container(OmegaConf.load(path)))


def config_values(run_dir: Path, keys: list[str]) -> dict:
    """``{key: value}`` of the given dotted config keys of a run; a key the run's config lacks is an error."""
    if not keys:
        return {}
    config = run_config(run_dir)
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"{run_dir}/config.yaml has no {', '.join(missing)} (needed by --by)")
    return {k: config[k] for k in keys}


def variant_name(values: dict) -> str:
    """A short name for a run's --by values, e.g. ``lr0.004`` for ``{"optim.lr": 0.004}``."""
    return "-".join(f"{key.rsplit('.', 1)[-1]}{value:g}" if isinstance(value, float)
                    else f"{key.rsplit('.', 1)[-1]}{value}" for key, value in values.items())


def variant_of(row: dict, by: list[str]) -> tuple:
    """A run row's values of the --by keys, e.g. ``(0.004,)`` for ``by=["optim.lr"]``."""
    return tuple(row[k] for k in by)


def variants(rows: list[dict], by: list[str]) -> list[tuple]:
    """The distinct --by values among the runs, sorted: numbers numerically, then anything else by its text."""
    def order(value):
        return tuple((0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x)) for x in value)

    return sorted({variant_of(row, by) for row in rows}, key=order)


def check_one_run_per_cell(rows: list[dict], by: list[str]) -> None:
    """Two runs of one activation and seed (and --by values) would be averaged as if they were seeds, and
    the paired test would keep only one of them: refuse, naming the config keys that tell them apart."""
    cells = defaultdict(list)
    for row in rows:
        cells[(row["activation"], row["seed"], *variant_of(row, by))].append(Path(row["run_dir"]))
    for (activation, seed, *values), dirs in cells.items():
        if len(dirs) > 1:
            raise ValueError(conflict_message(dirs, f"activation={activation} seed={seed}"
                                              + "".join(f" {k}={v}" for k, v in zip(by, values))))


def conflict_message(dirs: list[Path], label: str) -> str:
    """Why several runs claim one place (a table cell, a study folder): the config keys of what they train that
    tell them apart (pass ``--by`` one of them), or, when there are none, that they are the same job run twice,
    which one is newer and which complete."""
    first, second = run_config(dirs[0]), run_config(dirs[1])
    identity = (config_diff.DEFINES, config_diff.EXTENDS)  # what is trained, and for how long
    differ = sorted(k for k in first.keys() | second.keys()
                    if first.get(k) != second.get(k) and config_diff.kind(k) in identity)
    if differ:
        return (f"{len(dirs)} runs are {label} ({dirs[0]}, {dirs[1]}); their configs differ in "
                f"{', '.join(differ[:6])}: pass --by {differ[0]} to keep them apart")
    return duplicate_message(dirs, label)


def duplicate_message(dirs: list[Path], label: str) -> str:
    """The same job run more than once: each run's state and age, the newer named."""
    newest = max(dirs, key=last_written)
    described = "; ".join(f"{d} ({result_problem(read_summary(d)) or 'complete'}, last written "
                          f"{datetime.fromtimestamp(last_written(d)):%Y-%m-%d %H:%M}"
                          f"{', the newer' if d == newest else ''})" for d in dirs)
    return (f"the same job ({label}) ran {len(dirs)} times: {described}. A sweep relaunched without "
            "trainer.resume=auto (or before sweeps continued their folder) repeats its jobs in a new folder; keep "
            "one: pass only one sweep folder, or move the other run away")


def last_written(run_dir: Path) -> float:
    """When the run last wrote its summary or metrics (0 when it wrote neither)."""
    times = [(Path(run_dir) / name).stat().st_mtime for name in (SUMMARY, METRICS) if (Path(run_dir) / name).exists()]
    return max(times, default=0.0)


def same_runs(a: Path, b: Path) -> bool:
    """Two run folders hold the same job (``polycom.config_diff.same_job`` of their config.yaml)."""
    return config_diff.same_job(run_config(a), run_config(b))


def add_by_option(parser) -> None:
    """``--by CONFIG.KEY`` for the scripts that read sweeps (collect_runs, summarize, plot)."""
    parser.add_argument("--by", action="append", default=[], metavar="CONFIG.KEY",
                        help="a config key the sweep varies besides activation and seed, e.g. optim.lr (repeatable)")


def load_runs_or_exit(parser, roots: list[Path], by: list[str]) -> list[dict]:
    """``load_runs`` for a script: mixed-up or missing runs end it with a usage error naming the problem."""
    report_skipped(roots)
    try:
        rows = load_runs(roots, by)
    except ValueError as error:
        parser.error(str(error))
    if not rows:
        parser.error(f"no complete run (summary.json) found under {', '.join(map(str, roots))}")
    return rows


def report_skipped(roots: list[Path]) -> list[tuple[Path, str]]:
    """Print (to stderr) every run folder below ``roots`` that is left out, and why."""
    skipped = skipped_runs(roots)
    if skipped:
        print(f"skipped {len(skipped)} run(s):", file=sys.stderr)
        for run_dir, reason in skipped:
            print(f"  {run_dir}: {reason}", file=sys.stderr)
    return skipped


def load_runs(roots: list[Path], by: list[str] = ()) -> list[dict]:
    """One row per complete run below ``roots``; ``by`` adds those config keys as columns (an lr grid's
    ``optim.lr``), and runs are then told apart by activation, seed and those values."""
    by = list(by)
    rows = []
    for run_dir in find_run_dirs(roots):
        summary = json.loads((run_dir / SUMMARY).read_text())
        row = {k: summary.get(k) for k in BASE_COLUMNS}
        row["run_dir"] = str(run_dir)
        row.update(config_values(run_dir, by))
        row.update({k: summary[k] for k in downstream_columns(summary)})
        row.update(analysis_metrics(run_dir))
        rows.append(row)
    check_one_run_per_cell(rows, by)
    return rows


def load_curve(run_dir: Path, key: str = "val_loss") -> list[tuple[int, float]]:
    """(tokens, value) for every metrics.jsonl record that has ``key``."""
    path = Path(run_dir) / METRICS
    points = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get(key) is not None:
            points.append((record["tokens"], float(record[key])))
    return points


def write_results_csv(rows: list[dict], path: Path, by: list[str] = ()) -> list[str]:
    """One row per run; columns: the base ones, the --by config keys, then every downstream metric seen."""
    metric_columns = sorted({k for row in rows for k in row if "/" in k})
    columns = [c for c in BASE_COLUMNS if c != "run_dir"] + list(by) + metric_columns + ["run_dir"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["activation"], r["seed"], *variant_of(r, by))):
            writer.writerow(row)
    return columns

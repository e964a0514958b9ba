"""Collect finished runs (``summary.json`` + ``metrics.jsonl``) from sweep folders into one table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

BASE_COLUMNS = ["activation", "seed", "val_loss", "val_ppl", "tokens", "num_params", "num_params_active", "steps",
                "wall_seconds", "run_dir"]


def find_run_dirs(roots: list[Path]) -> list[Path]:
    """Every folder below ``roots`` holding a summary.json of a complete run, sorted."""
    found = set()
    for root in roots:
        for summary in Path(root).rglob("summary.json"):
            if json.loads(summary.read_text()).get("complete", True):
                found.add(summary.parent)
    return sorted(found)


def downstream_columns(summary: dict) -> list[str]:
    """Downstream metrics are the ``<task>/<metric>`` keys of a summary."""
    return sorted(k for k, v in summary.items() if "/" in k and isinstance(v, (int, float)))


def analysis_metrics(run_dir: Path) -> dict:
    """The paper's analyses of a run as ``analysis/<name>`` metrics when ``<run_dir>/analysis/analysis.json``
    (``scripts/analyze.py``) exists: each FFN matrix kind's effective rank averaged over layers
    (``analysis/erank_up``, ``_down``, ``_gate``), and the mean cosine similarity of hidden states between
    different layers (``analysis/similarity_off_diagonal``) and between adjacent ones (``_adjacent``)."""
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
    similarity = analysis.get("layer_similarity", {})
    if "mean_off_diagonal" in similarity:
        metrics["analysis/similarity_off_diagonal"] = similarity["mean_off_diagonal"]
    if similarity.get("adjacent"):
        metrics["analysis/similarity_adjacent"] = sum(similarity["adjacent"]) / len(similarity["adjacent"])
    return metrics


def load_runs(roots: list[Path]) -> list[dict]:
    rows = []
    for run_dir in find_run_dirs(roots):
        summary = json.loads((run_dir / "summary.json").read_text())
        row = {k: summary.get(k) for k in BASE_COLUMNS}
        row["run_dir"] = str(run_dir)
        row.update({k: summary[k] for k in downstream_columns(summary)})
        row.update(analysis_metrics(run_dir))
        rows.append(row)
    return rows


def load_curve(run_dir: Path, key: str = "val_loss") -> list[tuple[int, float]]:
    """(tokens, value) for every metrics.jsonl record that has ``key``."""
    path = Path(run_dir) / "metrics.jsonl"
    points = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get(key) is not None:
            points.append((record["tokens"], float(record[key])))
    return points


def write_results_csv(rows: list[dict], path: Path) -> list[str]:
    """One row per run; columns: the base ones, then every downstream metric seen in any run."""
    metric_columns = sorted({k for row in rows for k in row if "/" in k})
    columns = [c for c in BASE_COLUMNS if c != "run_dir"] + metric_columns + ["run_dir"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["activation"], r["seed"])):
            writer.writerow(row)
    return columns

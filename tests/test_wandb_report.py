"""scripts/wandb_report.py --offline: the report it would save, the summary run it logs, the tables and plots."""

import json
import math

import pytest

from polycom.report.curves import gap_curves
from polycom.report.runs import load_runs
from scripts_loader import load_script

GROUP = "my_study"


def write_run(root, activation, seed, val_losses, arc, blimp):
    run = root / "runs" / f"{activation}-s{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"seed: {seed}\nactivation:\n  name: {activation}\n"
                                     f"logger:\n  project: proj\n  entity: null\n  group: {GROUP}\n")
    (run / "summary.json").write_text(json.dumps({
        "activation": activation, "seed": seed, "val_loss": val_losses[-1], "val_ppl": math.exp(val_losses[-1]),
        "tokens": 300, "steps": 3, "complete": True, "arc_easy/acc": arc, "arc_easy/acc_norm": 0.3,
        "blimp/acc": blimp, "arc_easy/n": 570, "arc_easy/too_long": 0}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i + 1, "tokens": 100 * (i + 1), "loss": v + 0.1, "val_loss": v}) + "\n"
        for i, v in enumerate(val_losses)))


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "2026-01-01-study"
    for seed in range(3):
        write_run(root, "swiglu", seed, [6.0 + seed / 10, 5.0 + seed / 20, 4.0 + seed / 30], 0.25, 0.55)
        write_run(root, "polynorm", seed, [5.8 + seed / 9, 4.9 + seed / 21, 3.95 + seed / 31], 0.27 + seed / 100, 0.56)
        write_run(root, "gelu", seed, [6.1, 5.2 + seed / 19, 4.2 + seed / 29], 0.24, 0.54 + seed / 100)
    (root / "lr-grid" / "runs" / "x").mkdir(parents=True)  # another sweep inside a study folder is not read
    return root


def panels(grid):
    return {(p["type"], p.get("title") or p.get("table_name")): p for p in grid["panels"]}


def test_offline_report_groups_runs_by_activation_and_uploads_the_statistics(study, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    load_script("wandb_report").main([str(study), "--offline", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["type"] == "Report" and report["project"] == "proj" and report["title"] == "2026-01-01-study"
    training, statistics = [b for b in report["blocks"] if b["type"] == "PanelGrid"]

    # 1. the sweep's own runs, found by W&B group, grouped by activation: mean and std band over seeds, x = tokens
    (runs,) = training["runsets"]
    assert runs["filters"] == f"Group == '{GROUP}' and JobType != 'summary'"
    assert runs["groupby"] == ["config.activation.name"]
    loss = panels(training)[("LinePlot", "validation loss (mean of the seeds, std band)")]
    assert (loss["x"], loss["y"], loss["groupby_aggfunc"], loss["groupby_rangefunc"]) == (
        "tokens", ["val_loss"], "mean", "stddev")
    bars = panels(training)[("BarPlot", "headline accuracy per task (mean of the seeds, std)")]
    assert bars["metrics"] == ["arc_easy/acc", "blimp/acc"]  # headlines only: not acc_norm, not the counts

    # 2. the summary run: gap curves with their 95% interval, both tables, the plots
    assert statistics["runsets"][0]["filters"] == f"Group == '{GROUP}' and JobType == 'summary'"
    shown = panels(statistics)
    for act in ("gelu", "polynorm"):
        gap = shown[("LinePlot", f"{act} − swiglu: validation-loss gap, mean and 95% CI over seeds")]
        assert gap["x"] == "tokens" and gap["y"] == [f"gap/{act}/{k}" for k in ("mean", "ci95_low", "ci95_high")]
    assert {("WeavePanelSummaryTable", "summary_table"), ("WeavePanelSummaryTable", "val_loss_gap_table")} <= set(shown)
    media = next(p for (kind, _), p in shown.items() if kind == "MediaBrowser")
    assert media["media_keys"] == ["plots/val_loss", "plots/val_loss_gap", "plots/downstream"]
    assert all((out / "images" / f"{key.split('/')[1]}.png").stat().st_size > 1000 for key in media["media_keys"])

    # the tables are the report's own statistics: the 95% gap interval and the corrected verdicts
    summary = json.loads((out / "tables" / "summary_table.json").read_text())
    cells = [dict(zip(summary["columns"], row)) for row in summary["data"]]
    loss_pn = next(c for c in cells if c["activation"] == "polynorm" and c["metric"] == "val_loss")
    assert loss_pn["mean"] == pytest.approx((3.95 + 3.95 + 1 / 31 + 3.95 + 2 / 31) / 3)
    assert loss_pn["verdict"] in ("higher", "lower", "n.s.") and loss_pn["p_holm"] >= loss_pn["p_value"]
    gap_table = json.loads((out / "tables" / "val_loss_gap_table.json").read_text())
    expected = next(c for c in gap_curves(load_runs([study / "runs"]), "swiglu") if c.activation == "polynorm")
    points = [dict(zip(gap_table["columns"], row)) for row in gap_table["data"] if row[0] == "polynorm"]
    assert [p["ci95_low"] for p in points] == pytest.approx([g.ci95_low for g in expected.gaps])

    # the offline W&B run holds what an upload would send: both tables and every image
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    logged = {p.name.split("_")[0] for p in (run_dir / "files" / "media").rglob("*") if p.is_file()}
    assert {"summary", "val"} <= logged and len(list((run_dir / "files" / "media" / "images").rglob("*.png"))) == 3


def test_runs_without_a_group_need_one_named(study, tmp_path):
    for config in (study / "runs").glob("*/config.yaml"):
        config.write_text(config.read_text().replace(f"group: {GROUP}", "group: null"))
    with pytest.raises(SystemExit):
        load_script("wandb_report").main([str(study), "--offline", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        load_script("wandb_report").main([str(study), "--offline"])  # --offline needs --out

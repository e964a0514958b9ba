"""Sweep summaries: statistics on hand-made run files equal hand-computed values."""

import csv
import json
import math

import pytest

from polycom.report.plots import headline_metrics
from polycom.report.runs import load_runs
from polycom.report.stats import aggregate, paired_difference
from polycom.report.tables import lower_is_better, markdown, summary_rows
from scripts_loader import load_script

summarize = load_script("summarize")
plot = load_script("plot")

T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # closed-form t quantile for 2 degrees of freedom (4.3027)


def write_run(root, name, activation, seed, val_loss, arc, complete=True, lr=None):
    run = root / name
    run.mkdir(parents=True)
    if lr is not None:
        (run / "config.yaml").write_text(f"seed: {seed}\nactivation:\n  name: {activation}\noptim:\n  lr: {lr}\n"
                                         f"paths:\n  output_dir: {run}\n")
    summary = {"activation": activation, "seed": seed, "val_loss": val_loss, "val_ppl": math.exp(val_loss),
               "tokens": 1000, "num_params": 123, "steps": 10, "complete": complete, "arc_easy/acc": arc}
    (run / "summary.json").write_text(json.dumps(summary))
    records = [{"step": s, "tokens": 100 * s, "loss": 5.0 - s / 10, "val_loss": val_loss + (10 - s) / 10}
               for s in (5, 10)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun"
    for seed, (a, b) in enumerate([(3.0, 3.1), (3.2, 3.25), (3.4, 3.3)]):
        write_run(root, f"{seed}_polynorm", "polynorm", seed, a, 0.50 + seed / 100)
        write_run(root, f"{seed}_swiglu", "swiglu", seed, b, 0.48)
    write_run(root, "unfinished", "polynorm", 9, 9.9, 0.1, complete=False)
    return root


def test_aggregate_matches_hand_computation():
    agg = aggregate([3.0, 3.2, 3.4])
    half = T975_DF2 * 0.2 / math.sqrt(3)
    assert agg.n == 3 and agg.mean == pytest.approx(3.2) and agg.std == pytest.approx(0.2)
    assert (agg.ci95_low, agg.ci95_high) == (pytest.approx(3.2 - half), pytest.approx(3.2 + half))
    single = aggregate([1.5])
    assert single.mean == 1.5 and math.isnan(single.std)


def test_paired_difference_matches_hand_computation():
    diff = paired_difference({0: 3.0, 1: 3.2, 2: 3.4, 7: 1.0}, {0: 3.1, 1: 3.25, 2: 3.3})
    diffs = [-0.1, -0.05, 0.1]
    mean = sum(diffs) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    t = mean / (std / math.sqrt(3))
    p = 1 - abs(t) / math.sqrt(t * t + 2)  # two-sided p of Student's t with 2 degrees of freedom
    assert diff.n == 3  # seed 7 has no baseline partner
    assert diff.mean_diff == pytest.approx(mean) and diff.std_diff == pytest.approx(std)
    assert diff.p_value == pytest.approx(p, rel=1e-6)


def test_summarize_writes_tables_for_every_activation(sweep, tmp_path):
    out = tmp_path / "study"
    summarize.main([str(sweep), "--out-dir", str(out)])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 6  # the unfinished run is left out
    assert {"activation", "seed", "val_loss", "val_ppl", "tokens", "num_params", "arc_easy/acc"} <= set(rows[0])
    summary = {(r["activation"], r["metric"]): r for r in csv.DictReader(open(out / "summary.csv"))}
    assert float(summary[("polynorm", "val_loss")]["mean"]) == pytest.approx(3.2)
    assert float(summary[("polynorm", "val_loss")]["diff_vs_baseline"]) == pytest.approx(-1 / 60)
    assert float(summary[("polynorm", "arc_easy/acc")]["mean"]) == pytest.approx(0.51)
    text = (out / "summary.md").read_text()
    assert "| metric | swiglu (n=3) | polynorm (n=3) |" in text and "| 3.2000 ± 0.2000 [" in text


def test_significance_marks_follow_each_metrics_direction():
    """Lower perplexity (any task's) is better, higher accuracy is better: the marks must say so."""
    rows = []
    for seed, (ppl, acc) in enumerate([(10.0, 0.60), (11.0, 0.62), (12.5, 0.61)]):
        rows.append({"activation": "polynorm", "seed": seed, "val_loss": 3.0 + seed / 10, "val_ppl": 20.0,
                     "lambada/perplexity": ppl * 1e6, "arc_easy/acc": acc})
        rows.append({"activation": "swiglu", "seed": seed, "val_loss": 3.5 + seed / 9, "val_ppl": 20.0,
                     "lambada/perplexity": (ppl + 5 + seed / 7) * 1e6, "arc_easy/acc": acc - (0.10, 0.06, 0.11)[seed]})
    text = markdown(summary_rows(rows, "swiglu"), "swiglu")
    assert "1.117e+07 ± 1.258e+06 [" in text  # a tiny model's perplexities stay readable
    cells = {line.split(" | ")[0][2:]: line.rstrip(" |") for line in text.split("Paired difference")[1].splitlines()
             if line.startswith("| ") and not line.startswith("| metric")}
    marks = {m.split(" (")[0]: cell.split(" p=")[1].split(" ")[0].lstrip("0123456789.e-–")
             for m, cell in cells.items()}
    assert marks == {"val_loss": "*", "val_ppl": "", "lambada/perplexity": "*", "arc_easy/acc": "*"}
    # three tests (val_ppl is constant). Holm: the smallest p (val_loss) x 3, the next (lambada) x 2, arc_easy's
    # p = 0.028 x 1: all three survive, though arc_easy misses Bonferroni's 0.05 / 3
    by_metric = {r["metric"]: r for r in summary_rows(rows, "swiglu") if r["activation"] == "polynorm"}
    p_loss, p_ppl, p_arc = (by_metric[m]["p_value"] for m in ("val_loss", "lambada/perplexity", "arc_easy/acc"))
    assert p_loss < p_ppl < p_arc == pytest.approx(0.0276, abs=1e-4)
    assert [by_metric[m]["p_holm"] for m in ("val_loss", "lambada/perplexity", "arc_easy/acc")] == pytest.approx(
        [3 * p_loss, 2 * p_ppl, p_arc])
    assert "p=0.028* (Holm 0.028: higher)" in cells["arc_easy/acc (chance 0.25)"]
    assert "(Holm 0.00047: lower)" in cells["val_loss"] and "Holm" not in cells["val_ppl"]
    assert "3 of 3 survive (Bonferroni's threshold, the strictest step of Holm's, is p < 0.017)" in text
    flipped = [{**r, "activation": {"polynorm": "swiglu", "swiglu": "polynorm"}[r["activation"]]} for r in rows]
    text = markdown(summary_rows(flipped, "swiglu"), "swiglu")
    assert "p=0.0" in text and "*" not in text.split("Paired difference")[1].split("`*`")[0]
    assert lower_is_better("wikitext/word_perplexity") and not lower_is_better("blimp/acc")


def test_holm_adjusts_step_down_and_keeps_the_order():
    from polycom.report.stats import holm

    adjusted = holm([0.01, 0.04, 0.03, math.nan, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 of m = 4 tests: x4, x3, x2 (0.08 < 0.09, so 0.09 holds), x1
    assert adjusted[:3] + adjusted[4:] == pytest.approx([0.04, 0.09, 0.09, 0.5]) and math.isnan(adjusted[3])
    assert holm([0.3, 0.02]) == pytest.approx([0.3, 0.04]) and holm([0.9, 0.8]) == [1.0, 1.0] and holm([]) == []


def test_plot_writes_pngs(sweep, tmp_path):
    plot.main([str(sweep), "--out-dir", str(tmp_path)])
    for name in ("val_loss.png", "downstream.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


collect_runs = load_script("collect_runs")


def test_collect_runs_copies_the_small_files_of_complete_runs_in_parts(sweep, tmp_path):
    out = tmp_path / "study" / "runs"
    for part in ("0_polynorm", "0_swiglu"):  # a sweep collected part by part
        collect_runs.main([str(sweep / part), "--out-dir", str(out)])
    collect_runs.main([str(sweep), "--out-dir", str(out)])
    collect_runs.main([str(sweep), "--out-dir", str(out)])  # again: the same runs, nothing changes
    assert sorted(p.name for p in out.iterdir()) == [f"{a}-s{s}" for a in ("polynorm", "swiglu") for s in range(3)]
    assert sorted(p.name for p in (out / "polynorm-s2").iterdir()) == ["metrics.jsonl", "summary.json"]
    summarize.main([str(out), "--out-dir", str(tmp_path / "study")])
    summary = {(r["activation"], r["metric"]): r for r in csv.DictReader(open(tmp_path / "study" / "summary.csv"))}
    assert float(summary[("polynorm", "val_loss")]["mean"]) == pytest.approx(3.2)


def test_collect_runs_refuses_to_overwrite_another_run(sweep, tmp_path):
    out = tmp_path / "runs"
    collect_runs.main([str(sweep), "--out-dir", str(out)])
    other = tmp_path / "other"
    write_run(other, "x", "polynorm", 0, 2.0, 0.6)
    summary = json.loads((other / "x" / "summary.json").read_text())
    (other / "x" / "summary.json").write_text(json.dumps({**summary, "run_dir": "/elsewhere"}))
    with pytest.raises(SystemExit, match="already holds"):
        collect_runs.main([str(other), "--out-dir", str(out)])


def test_the_analyses_of_a_run_become_its_analysis_metrics(sweep, tmp_path):
    analysis = {"erank": [{"layer": 0, "up": 10.0, "up_max": 64, "down": 4.0},
                          {"layer": 1, "up": 20.0, "up_max": 64, "down": 6.0}],
                "layer_similarity": {"mean_off_diagonal": 0.25, "adjacent": [0.5, 0.7]}}
    (sweep / "0_polynorm" / "analysis").mkdir()
    (sweep / "0_polynorm" / "analysis" / "analysis.json").write_text(json.dumps(analysis))
    rows = {(r["activation"], r["seed"]): r for r in load_runs([sweep])}
    assert rows[("polynorm", 0)]["analysis/erank_up"] == 15.0 and rows[("polynorm", 0)]["analysis/erank_down"] == 5.0
    assert rows[("polynorm", 0)]["analysis/similarity_off_diagonal"] == 0.25
    assert rows[("polynorm", 0)]["analysis/similarity_adjacent"] == pytest.approx(0.6)
    assert "analysis/erank_up" not in rows[("polynorm", 1)]
    assert "analysis/erank_up" not in headline_metrics(list(rows.values()))


@pytest.fixture
def lr_sweep(tmp_path):
    """Two activations x two learning rates x two seeds; polynorm is best at lr 0.004, swiglu at 0.001."""
    root = tmp_path / "lr_grid"
    losses = {("polynorm", 0.001): (3.3, 3.5), ("polynorm", 0.004): (3.0, 3.1),
              ("swiglu", 0.001): (3.2, 3.4), ("swiglu", 0.004): (3.6, 3.9)}
    for (act, lr), per_seed in losses.items():
        for seed, loss in enumerate(per_seed):
            write_run(root, f"{act}_{lr}_{seed}", act, seed, loss, 0.5, lr=lr)
    return root


def test_runs_differing_in_another_config_key_are_not_averaged_as_seeds(lr_sweep, tmp_path):
    with pytest.raises(SystemExit):
        summarize.main([str(lr_sweep), "--out-dir", str(tmp_path / "mixed")])
    with pytest.raises(ValueError, match=r"activation=polynorm seed=0 .*differ in optim\.lr: pass --by optim\.lr"):
        load_runs([lr_sweep])
    assert not (tmp_path / "mixed" / "results.csv").exists()


def test_an_lr_grid_is_summarized_per_learning_rate(lr_sweep, tmp_path):
    runs = tmp_path / "study" / "runs"
    collect_runs.main([str(lr_sweep), "--out-dir", str(runs), "--by", "optim.lr"])
    assert sorted(p.name for p in runs.iterdir()) == sorted(
        f"{a}-s{s}-lr{lr}" for a in ("polynorm", "swiglu") for s in (0, 1) for lr in ("0.001", "0.004"))
    out = tmp_path / "study"
    summarize.main([str(runs), "--out-dir", str(out), "--by", "optim.lr"])
    results = list(csv.DictReader(open(out / "results.csv")))
    assert len(results) == 8 and {r["optim.lr"] for r in results} == {"0.001", "0.004"}
    summary = {(r["optim.lr"], r["activation"], r["metric"]): r for r in csv.DictReader(open(out / "summary.csv"))}
    assert float(summary[("0.004", "polynorm", "val_loss")]["mean"]) == pytest.approx(3.05)
    assert float(summary[("0.001", "swiglu", "val_loss")]["mean"]) == pytest.approx(3.3)
    # paired against swiglu at the same lr: (3.0 - 3.6, 3.1 - 3.9)
    assert float(summary[("0.004", "polynorm", "val_loss")]["diff_vs_baseline"]) == pytest.approx(-0.7)
    text = (out / "summary.md").read_text()
    assert "| polynorm | 3.4000 ± 0.1414 (n=2) | **3.0500 ± 0.0707 (n=2)** | optim.lr=0.004 |" in text
    assert "| swiglu | **3.3000 ± 0.1414 (n=2)** | 3.7500 ± 0.2121 (n=2) | optim.lr=0.001 |" in text
    assert "## optim.lr=0.001" in text and "## optim.lr=0.004" in text
    plot.main([str(runs), "--out-dir", str(out), "--by", "optim.lr"])
    assert (out / "val_loss_by_optim.lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_curve_run(root, activation, seed, val_losses):
    run = root / f"{activation}-s{seed}"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"activation": activation, "seed": seed, "val_loss": val_losses[-1],
                                                  "tokens": 300, "steps": 3, "complete": True}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "tokens": 100 * (i + 1), "val_loss": v}) + "\n"
                                               for i, v in enumerate(val_losses)))


def test_gap_curves_pair_seeds_at_each_point_and_find_the_largest_gap(tmp_path):
    from polycom.report.curves import gap_curves, gap_markdown

    root = tmp_path / "runs"
    base = {0: [6.0, 5.0, 4.0], 1: [6.2, 5.1, 4.1]}
    lead = {0: [-0.10, -0.30, -0.05], 1: [-0.20, -0.50, -0.15]}  # polynorm minus swiglu, per seed and point
    for seed in (0, 1):
        write_curve_run(root, "swiglu", seed, base[seed])
        write_curve_run(root, "polynorm", seed, [b + d for b, d in zip(base[seed], lead[seed])])
    write_curve_run(root, "gelu", 0, [6.5, 5.5, 4.5])  # one seed: a mean, no interval
    (curve_gelu, curve_pn) = sorted(gap_curves(load_runs([root]), "swiglu"), key=lambda c: c.activation)
    assert curve_pn.tokens == [100, 200, 300]
    assert [g.mean_diff for g in curve_pn.gaps] == pytest.approx([-0.15, -0.40, -0.10])
    assert curve_pn.largest()[0] == 200 and curve_pn.final()[1].mean_diff == pytest.approx(-0.10)
    half = 12.706204736174707 * (0.1 * math.sqrt(2)) / math.sqrt(2)  # t_0.975,1 x std of (-0.3, -0.5) / sqrt(n)
    assert curve_pn.gaps[1].ci95_low == pytest.approx(-0.40 - half)
    assert curve_gelu.gaps[0].n == 1 and math.isnan(curve_gelu.gaps[0].ci95_low)
    table = gap_markdown([curve_pn], "swiglu")
    assert "| polynorm | 2 | 200 | -0.4000 |" in table and "| 0.2500 |" in table  # final / largest = 0.1 / 0.4
    # pointwise p (t = -4, -3, -2 with 1 degree of freedom: p = 1 - 2 atan|t| / pi) and Holm's over the 3 points
    p_200, p_100, p_300 = (1 - 2 * math.atan(t) / math.pi for t in (4, 3, 2))
    assert f"| {p_200:.2g} ({3 * p_200:.2g}) |" in table and f"| {p_300:.2g} ({3 * p_200:.2g}) |" in table
    assert "Holm's adjusted p over the 3 paired tests" in table


def test_plot_and_summary_include_the_gap_curves(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_curve_run(root, "swiglu", seed, [6.0, 5.0 + seed / 10])
        write_curve_run(root, "polynorm", seed, [5.9, 4.9])
    out = tmp_path / "out"
    plot.main([str(root), "--out-dir", str(out)])
    assert (out / "val_loss_gap.png").stat().st_size > 1000
    summarize.main([str(root), "--out-dir", str(out)])
    assert "Learning curves: val_loss gap to swiglu" in (out / "summary.md").read_text()
    with open(out / "val_loss_gap.csv") as f:
        points = list(csv.DictReader(f))
    assert [(p["activation"], int(p["tokens"])) for p in points] == [("polynorm", 100), ("polynorm", 200)]
    assert float(points[1]["seed_0"]) == pytest.approx(-0.1) and float(points[1]["seed_1"]) == pytest.approx(-0.2)
    assert float(points[1]["mean_gap"]) == pytest.approx(-0.15) and int(points[1]["n"]) == 2


def test_gap_plot_has_a_panel_per_activation_in_that_activations_color(tmp_path, monkeypatch):
    from matplotlib.colors import to_hex

    from polycom.report import plots
    from polycom.report.curves import gap_curves

    root = tmp_path / "runs"
    for seed in (0, 1):
        write_curve_run(root, "swiglu", seed, [6.0, 5.0, 4.0])
        for i, act in enumerate(("relu", "relu2", "polyrelu", "polynorm")):
            write_curve_run(root, act, seed, [6.0 - i / 10, 5.0 + seed / 10, 4.0])
    curves = gap_curves(load_runs([root]), "swiglu")
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)  # keep the figure to look at it
    plots.plot_gap_curves(curves, "swiglu", tmp_path / "gap.png")
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["relu (n=2)", "relu2 (n=2)", "polyrelu (n=2)", "polynorm (n=2)"]
    assert len(fig.axes) == 6  # a 2 x 3 grid, the last two panels hidden
    for ax, act in zip(panels, ("relu", "relu2", "polyrelu", "polynorm")):
        data_lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]  # not the zero line
        assert len(data_lines) == 3  # two seeds and their mean
        assert {to_hex(line.get_color()) for line in data_lines} == {to_hex(plots.activation_color(act))}
    known = {plots.activation_color(a) for a in ("relu", "gelu", "swiglu", "relu2", "polyrelu", "polynorm")}
    assert len(known) == 6
    for other in ("silu", "geglu", "polynorm_order4", "x"):  # an activation outside ACTIVATION_ORDER
        assert plots.activation_color(other) not in known


def test_per_group_results_get_their_own_tables_and_plots_up_to_twenty_groups(tmp_path):
    """BLiMP's phenomenon groups get a table and a plot; its 67 paradigms only reach the CSVs."""
    root = tmp_path / "runs"
    for seed in range(3):
        for act, shift in (("swiglu", 0.0), ("polynorm", 0.02 + seed / 100)):
            write_run(root, f"{act}-s{seed}", act, seed, 3.0 - shift, 0.3)
            path = root / f"{act}-s{seed}" / "summary.json"
            summary = json.loads(path.read_text())
            summary.update({"blimp/acc": 0.6 + shift, "blimp/phenomenon/island_effects/acc": 0.55 + shift,
                            "blimp/phenomenon/quantifiers/acc": 0.7 - shift})
            summary.update({f"blimp/paradigm/p{i}/acc": 0.6 for i in range(21)})
            path.write_text(json.dumps(summary))
    out = tmp_path / "out"
    summarize.main([str(root), "--out-dir", str(out)])
    text = (out / "summary.md").read_text()
    headline, groups = text.split("### blimp by phenomenon (2 groups)")
    assert "| blimp/acc (chance 0.5) |" in headline and "phenomenon" not in headline and "paradigm" not in text
    assert "| blimp/phenomenon/island_effects/acc (chance 0.5) | 0.5500 ± 0.0000" in groups
    assert "2 tests, of which about 0.1 would reach p < 0.05" in groups  # each breakdown is its own family
    # val_loss, val_ppl, blimp/acc and the mean of the two tasks (arc_easy/acc has no variance)
    assert "4 tests, of which" in headline and "`tasks_mean/acc`: per run, the mean of" in headline
    metrics = {r["metric"] for r in csv.DictReader(open(out / "summary.csv"))}
    assert "blimp/paradigm/p20/acc" in metrics and "blimp/phenomenon/quantifiers/acc" in metrics
    plot.main([str(root), "--out-dir", str(out)])
    assert (out / "blimp_phenomenon.png").stat().st_size > 1000 and not (out / "blimp_paradigm.png").exists()


def test_plots_show_the_whole_run_chance_lines_and_intervals_at_a_legible_size(tmp_path, monkeypatch):
    """val_loss.png starts at the first validation point (an early lead must not be cut off), bar plots carry each
    task's chance line and 95% intervals and show one headline metric per task, and every figure is at most 1,600 px
    wide at its dpi with no text under 9 pt, even for 13 groups x 6 activations (BLiMP's phenomena)."""
    from matplotlib.collections import LineCollection
    from matplotlib.text import Text

    from polycom.report import plots

    root = tmp_path / "runs"
    phenomena = [f"phenomenon_{i:02d}" for i in range(13)]
    for seed in range(3):
        for i, act in enumerate(("relu", "gelu", "swiglu", "relu2", "polyrelu", "polynorm")):
            run = root / f"{act}-s{seed}"
            write_curve_run(root, act, seed, [6.0 - i / 10 + k / 5 - seed / 50 for k in range(0, -12, -1)])
            summary = json.loads((run / "summary.json").read_text())
            summary.update({"arc_easy/acc": 0.25 + i / 100 + seed / 200, "arc_easy/acc_norm": 0.3,
                            "piqa/acc": 0.52, "piqa/acc_norm": 0.5 + seed / 100, "piqa/n": 1834, "piqa/too_long": 4,
                            **{f"blimp/phenomenon/{p}/acc": 0.5 + j / 50 + seed / 100
                               for j, p in enumerate(phenomena)}})
            (run / "summary.json").write_text(json.dumps(summary))
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    plot.main([str(root), "--out-dir", str(tmp_path / "out")])
    assert [p.name for p in sorted((tmp_path / "out").glob("*.png"))] == [
        "blimp_phenomenon.png", "downstream.png", "val_loss.png", "val_loss_gap.png"]
    for fig in figures:
        assert fig.get_size_inches()[0] * plots.DPI <= 1600
        sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
        assert min(sizes) >= 9, fig.axes[0].get_title()
    val_loss, _, downstream, phenomenon = figures
    whole_run = val_loss.axes[0]
    assert min(min(line.get_xdata()) for line in whole_run.get_lines()) == 100  # the first point, not cut off
    assert len(val_loss.axes) == 2 and min(val_loss.axes[1].get_lines()[0].get_xdata()) >= 600  # the zoomed half
    ax = downstream.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["arc_easy/acc", "piqa/acc_norm"]  # headlines only
    chance_lines = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_label() == "chance"]
    assert [tuple(seg[0][1] for seg in c.get_segments()) for c in chance_lines] == [(0.25,)]
    assert sorted(seg[0][1] for c in ax.collections if isinstance(c, LineCollection)
                  for seg in c.get_segments() if c.get_linestyle()[0][1]) == [0.25, 0.5]
    error_bars = [c for c in ax.collections if isinstance(c, LineCollection) and not c.get_linestyle()[0][1]]
    assert error_bars  # 95% intervals drawn
    assert len(phenomenon.axes[0].get_xticklabels()) == 13

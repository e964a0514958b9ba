"""The compute ladder: its configs (rung tables, recipe, sweep), the scaling-law fits and bootstrap, the lr rule, and
``scripts/ladder.py fit/report/lr/plan`` on runs generated from known laws (a constant multiplier and a growing one)."""

import json
import math

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from polycom.report import ladder, scaling
from polycom.train.build import compose_config
from scripts_loader import load_script

V, SEQ = 4096, 256
STEP = 16 * SEQ  # the CPU ladder's tokens per step


# ---- generated runs ---------------------------------------------------------------------------------------------
E, ALPHA, A_LINE = 2.0, 0.25, {"t5": 3300.0, "t20": 3000.0}  # the baseline's L(C) per budget line
K_CONST = 2.0  # polynorm: a constant multiplier


def growing(c):  # gelu: a multiplier growing as C^0.15
    return 0.7 * (c / 1e13) ** 0.15


def baseline_loss(c, budget):
    return E + A_LINE[budget] * c**-ALPHA


def true_multiplier(act, c):
    return {"swiglu": 1.0, "polynorm": K_CONST, "gelu": growing(c)}[act]


TPS = {"swiglu": 10000.0, "polynorm": 9000.0, "gelu": 11000.0}


def write_run(folder, act, seed, rung, budget, loss, tokens, lr=2e-3, order=None):
    d, layers, heads, width = rung.dims
    n_matmul = rung.params + V * d  # non-embedding + the LM head
    summary = {"activation": act, "activation_order": order, "seed": seed, "complete": True, "vocab_size": V,
               "model": {"hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads,
                         "intermediate_size": width, "max_position_embeddings": SEQ, "tie_word_embeddings": False},
               "num_params": rung.params + 2 * V * d, "num_params_embedding": V * d, "num_params_matmul": n_matmul,
               "tokens": tokens, "val_loss": loss}
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.yaml").write_text(OmegaConf.to_yaml({"trainer": {"seq_len": SEQ}, "optim": {"lr": lr},
                                                           "ladder": {"name": "cpu", "rung": rung.name,
                                                                      "budget": budget}}))
    tps = TPS[act]
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "tokens": i * STEP, "tokens_per_s": v}) + "\n"
                                                  for i, v in enumerate([tps / 3, tps, tps * 1.01, tps * 0.99])))


def compute_of(rung, tokens):
    d, layers = rung.dims[:2]
    return ladder.flops_per_token(rung.params + V * d, layers, d, SEQ) * tokens


def make_study(root, noise=0.004, seed=0, seeds_per_cell=3):
    rng = np.random.default_rng(seed)
    rungs = ladder.ladder_rungs("cpu")
    for rung in rungs.values():
        for budget in ("t5", "t20"):
            tokens = rung.budgets[budget]
            c = compute_of(rung, tokens)
            for act in ("swiglu", "polynorm", "gelu"):
                clean = baseline_loss(true_multiplier(act, c) * c, budget)
                for s in range(seeds_per_cell):
                    write_run(root / "runs" / f"{act}-{rung.name}-{budget}-s{s}", act, s, rung, budget,
                              clean + rng.normal(0, noise), tokens)
    return rungs


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    study = tmp_path_factory.mktemp("study")
    make_study(study)
    load_script("ladder").main(["report", str(study), "--replicates", "300", "--chinchilla-replicates", "40"])
    return study, json.loads((study / ladder.FIT_FILE).read_text())


def test_fit_recovers_a_constant_and_a_growing_multiplier_within_their_intervals(fitted):
    study, result = fitted
    for act in ("polynorm", "gelu"):
        cells = result["activations"][act]["cells"]
        assert len(cells) == 8  # 4 rungs x 2 budgets
        covered = [c["multiplier_ci95"][0] <= true_multiplier(act, c["compute"]) <= c["multiplier_ci95"][1]
                   for c in cells]
        assert sum(covered) >= 7, (act, [(c["multiplier"], c["multiplier_ci95"]) for c in cells])
        for c in cells:  # and the point estimate is close
            assert c["multiplier"] == pytest.approx(true_multiplier(act, c["compute"]), rel=0.1)
        pinned = [c["multiplier_vs_cells_ci95"][0] <= true_multiplier(act, c["compute"])
                  <= c["multiplier_vs_cells_ci95"][1] for c in cells]  # on a power law: the same as the curve's
        assert sum(pinned) >= 7, (act, [(c["multiplier_vs_cells"], c["multiplier_vs_cells_ci95"]) for c in cells])
    for budget in ("t5", "t20"):
        const = result["activations"]["polynorm"]["trend"][budget]
        grow = result["activations"]["gelu"]["trend"][budget]
        assert const["slope_ci95"][0] <= 0.0 <= const["slope_ci95"][1] and const["p_value"] > 0.05, const
        assert grow["slope_ci95"][0] <= 0.15 <= grow["slope_ci95"][1] and grow["p_value"] < 0.01, grow
        assert grow["per_decade"] == pytest.approx(grow["slope"] * math.log(10))


def test_wall_clock_multiplier_uses_the_measured_tokens_per_s(fitted):
    _, result = fitted
    for c in result["activations"]["polynorm"]["cells"]:
        # equal FLOPs per token here, so time multiplier = multiplier x (9000 / 10000 tokens/s)
        assert c["tokens_per_s"] == pytest.approx(9000.0)
        assert c["wall_clock_multiplier"] == pytest.approx(c["multiplier"] * 0.9, rel=1e-3)


def test_extrapolated_gap_and_how_far_it_reaches(fitted):
    study, result = fitted
    ex = result["extrapolation"]
    c_max = max(compute_of(r, r.budgets["t20"]) for r in ladder.ladder_rungs("cpu").values())
    assert ex["decades_beyond_data"] == pytest.approx(math.log10(2.58e21 / c_max))
    target = ex["target"]["compute"]
    for budget, e in ex["lines"].items():
        true_gap = baseline_loss(K_CONST * target, budget) - baseline_loss(target, budget)
        assert e["gap_ci95"][0] <= true_gap <= e["gap_ci95"][1], (budget, e, true_gap)
    assert "gap" in ex["chinchilla"] and ex["chinchilla"]["gap_ci95"][0] <= ex["chinchilla"]["gap_ci95"][1]
    text = (study / "ladder.md").read_text()
    assert f"{ex['decades_beyond_data']:.1f} decades" in text and "−0.02" not in text and "-0.02" in text
    by_rung = text.split("by rung", 1)[1].split("## Per rung", 1)[0]  # the glance table: one row per activation
    row = next(line for line in by_rung.splitlines() if line.startswith("| polynorm"))
    cells = [c.strip() for c in row.split("|")[2:-2]]
    assert len(cells) == 4 and all(float(c.split()[0]) == pytest.approx(K_CONST, rel=0.1) for c in cells)
    for name in ("loss_vs_compute.png", "multiplier_vs_compute.png"):
        assert (study / name).stat().st_size > 10_000


def test_ladder_fit_json_holds_each_cell_and_trend(fitted):
    _, result = fitted
    cell = result["activations"]["polynorm"]["cells"][0]
    assert {"rung", "budget", "compute", "loss", "multiplier", "multiplier_ci95", "seeds"} <= set(cell)
    assert set(result["activations"]["polynorm"]["trend"]["t20"]) >= {"slope", "p_value", "slope_ci95"}
    assert "trend" in result["activations"]["swiglu"] and not result["activations"]["swiglu"]["trend"]
    assert result["budget_lines"] == {"t5": ["r1", "r2", "r3", "r4"], "t20": ["r1", "r2", "r3", "r4"]}


def test_two_runs_of_one_cell_and_seed_are_refused(tmp_path):
    rung = ladder.ladder_rungs("cpu")["r1"]
    for i in range(2):
        write_run(tmp_path / "runs" / f"a{i}", "swiglu", 0, rung, "t5", 4.0 + i, rung.budgets["t5"], lr=1e-3 * (i + 1))
    rows = ladder.load_ladder_runs([tmp_path])
    with pytest.raises(ValueError, match="two runs of seed 0"):
        ladder.Cells.from_rows(rows)


def test_runs_are_labelled_by_rung_and_budget_without_ladder_keys(tmp_path):
    """Runs from before the ladder config (the BabyLM study's) get their rung from the model and their budget from
    the rung's table."""
    rung = ladder.ladder_rungs("cpu")["r4"]
    write_run(tmp_path / "old", "swiglu", 1, rung, None, 3.9, 16_384_000)
    (tmp_path / "old" / "config.yaml").write_text(OmegaConf.to_yaml({"trainer": {"seq_len": SEQ}}))
    (row,) = ladder.load_ladder_runs([tmp_path], ladder.ladder_rungs("cpu"))
    assert (row["rung"], row["budget"], row["params"]) == ("r4", "t20", 803968)
    (row,) = ladder.load_ladder_runs([tmp_path])
    assert row["rung"] == "d128-L4-h4-w352" and row["budget"] == "t20.4"


def test_babylm_runs_are_the_largest_rungs_t20_cells():
    """Recipe match: the BabyLM study's runs are what experiment=ladder_cpu ladder=cpu_r4 trains (so they serve as
    that rung's t20 cells): same model, data, tokenizer, optimizer, schedule, batch, budget and validation."""
    from polycom.report.runs import run_config

    study = REPO_ROOT / "experiments" / "2026-12-05-babylm-scale-dense-cpu"
    babylm = run_config(study / "runs" / "swiglu-s0")
    cfg = OmegaConf.to_container(compose_config(["experiment=ladder_cpu", "ladder=cpu_r4", "activation=swiglu",
                                                 "paths.data_dir=" + babylm["paths.data_dir"]]), resolve=True)
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(cfg, "")
    same = [k for k in babylm if k.startswith(("model.", "data.", "tokenizer.", "optim.", "schedule.", "activation."))
            and k != "tokenizer.cache_dir"]
    same += ["trainer.seq_len", "trainer.global_batch_size", "trainer.max_tokens", "trainer.grad_clip",
             "trainer.mixed_precision", "eval.val_tokens", "seed"]
    assert len(same) > 40
    assert {k: flat.get(k) for k in same} == {k: babylm[k] for k in same}
    rows = ladder.load_ladder_runs([study / "runs"], ladder.ladder_rungs("cpu"))
    assert len(rows) == 18 and {(r["rung"], r["budget"]) for r in rows} == {("r4", "t20")}
    assert {r["lr"] for r in rows if r["activation"] == "swiglu"} == {cfg["ladder"]["lr"]["swiglu"]}


# ---- configs ------------------------------------------------------------------------------------------------------
def _count(cfg, vocab):
    import torch

    from polycom.model import PolyComForCausalLM
    from polycom.model.stats import count_parameters
    from polycom.train.build import model_config

    with torch.device("meta"):
        counts = count_parameters(PolyComForCausalLM(model_config(cfg, vocab_size=vocab)))
    return counts.total - counts.embedding - vocab * cfg.model.hidden_size


@pytest.mark.parametrize("name,vocab,step", [("cpu", 4096, 16 * 256), ("gpu", 50304, 256 * 1024)])
def test_rung_tables_match_their_models(name, vocab, step):
    """Each rung's N is its SwiGLU model's non-embedding count, and each budget is tokens-per-N x N in whole steps
    (the CPU r4's t20 excepted: the BabyLM study's 4000 steps, 20.4 per N)."""
    rungs = ladder.ladder_rungs(name)
    ns = [r.params for r in rungs.values()]
    assert ns == sorted(ns) and ns[-1] / ns[0] >= 6  # the ladder spans >= 6x in N
    for rung in rungs.values():
        cfg = compose_config([f"experiment=ladder_{name}", f"ladder={name}_{rung.name}", "activation=swiglu"])
        assert _count(cfg, vocab) == rung.params, rung.name
        for budget, tokens in rung.budgets.items():
            assert tokens % step == 0, (rung.name, budget)
            if budget == "grid" or (name, rung.name, budget) == ("cpu", "r4", "t20"):
                continue
            assert tokens == round(float(budget[1:]) * rung.params / step) * step, (rung.name, budget)


def test_the_sweep_expands_to_cells_that_look_their_budget_and_lr_up():
    cfg = compose_config(["experiment=ladder_cpu"], return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params["ladder"] == ["cpu_r1", "cpu_r2", "cpu_r3", "cpu_r4"] and params["ladder.budget"] == ["t5", "t20"]
    assert "gated_polynorm" in params["activation"] and len(params["activation"]) == 7
    rungs = ladder.ladder_rungs("cpu")
    for rung, budget, act in [("cpu_r2", "t5", "relu"), ("cpu_r4", "t20", "polynorm"), ("cpu_r3", "t5", "pnglu")]:
        c = compose_config(["experiment=ladder_cpu", f"ladder={rung}", f"ladder.budget={budget}",
                            f"activation={act}", f"ladder.lr.{act}=0.0123"])
        r = rungs[rung.split("_")[1]]
        assert (c.model.hidden_size, c.model.intermediate_size) == (r.dims[0], r.dims[3])
        assert c.trainer.max_tokens == r.budgets[budget] and c.optim.lr == 0.0123
        assert c.logger.run_name == f"{act}-{r.name}-{budget}-s0"
    for name, rungs in (("cpu", "cpu_r1,cpu_r4"), ("gpu", "gpu_r1,gpu_r5")):  # the grid's sweep replaces the ladder's
        sweep = compose_config([f"experiment=ladder_{name}", f"hparams_search=ladder_{name}_lr_grid"],
                               return_hydra_config=True).hydra.sweeper.params
        assert (sweep["ladder"], sweep["ladder.budget"], str(sweep["seed"])) == (rungs, "grid", "0")
        assert len(str(sweep["optim.lr"]).split(",")) == 4
    grid = compose_config(["experiment=ladder_cpu", "hparams_search=ladder_cpu_lr_grid", "ladder=cpu_r4",
                           "optim.lr=4e-3"])
    assert grid.trainer.max_tokens == 1_048_576 and grid.optim.lr == 4e-3  # the BabyLM grid's budget
    bad = compose_config(["experiment=ladder_cpu", "ladder.budget=t7"])
    with pytest.raises(Exception, match="t7"):
        bad.trainer.max_tokens


def test_paper_point_is_the_paper_model_in_this_convention():
    import torch

    from polycom.model import PolyComForCausalLM
    from polycom.model.stats import count_parameters, model_flops_per_token

    cfg = compose_config(["model=paper_dense_1b", "activation=swiglu", "trainer.seq_len=4096"])
    from polycom.train.build import model_config

    with torch.device("meta"):
        counts = count_parameters(PolyComForCausalLM(model_config(cfg, vocab_size=50304)))
    fpt = model_flops_per_token(counts.matmul, 24, 2048, 4096)
    assert fpt == ladder.flops_per_token(counts.matmul, 24, 2048, 4096)  # the report's copy of the formula
    assert ladder.PAPER_POINT["compute"] == pytest.approx(fpt * 250e9, rel=0.005)
    assert ladder.PAPER_POINT["params"] == pytest.approx(counts.total - counts.embedding - 50304 * 2048, rel=0.001)


# ---- laws, bootstrap, lr rule -------------------------------------------------------------------------------------
def test_power_law_fit_and_inverse_are_exact_on_exact_data():
    truth = scaling.PowerLaw(E=1.7, a=0.8, alpha=0.31, c_ref=3e13)
    c = np.geomspace(1e12, 1e15, 5)
    fit = scaling.fit_power_law(c, truth(c))
    assert (fit.E, fit.A, fit.alpha) == pytest.approx((truth.E, truth.A, truth.alpha), rel=1e-6)
    assert fit.inverse(truth(4e13)) == pytest.approx(4e13, rel=1e-6)
    assert fit.inverse(1.6) == np.inf  # below the floor: never reached
    assert scaling.compute_multiplier(fit, truth(8e13), 2e13) == pytest.approx(4.0, rel=1e-6)


def test_chinchilla_fit_recovers_its_law():
    n = np.repeat([1e5, 2.4e5, 4.4e5, 8e5], 2)
    d = np.array([5, 20] * 4) * n
    fit = scaling.fit_chinchilla(n, d, 1.8 + 400 * n**-0.34 + 4000 * d**-0.28)
    assert (fit.E, fit.alpha, fit.beta) == pytest.approx((1.8, 0.34, 0.28), rel=1e-4)
    assert fit.at_bounds() == [] and fit.to_dict()["at_bounds"] == []


def test_chinchilla_fit_names_the_parameters_it_pushed_to_a_bound():
    """Losses that depend on D alone, with no floor (what the CPU ladder's first runs looked like): E runs to its
    floor and alpha to 0; the fit says so, and the report says the law is not determined."""
    n = np.repeat([1e5, 2.4e5, 4.4e5, 8e5], 2)
    d = np.array([5, 20] * 4) * n
    fit = scaling.fit_chinchilla(n, d, 24.0 * d**-0.11)
    assert set(fit.at_bounds()) >= {"E"} and fit.E < 0.01
    ch = {"fits": {"polynorm": fit.to_dict(), "swiglu": scaling.fit_chinchilla(n, d, 1.8 + 400 * n**-0.34
                                                                            + 4000 * d**-0.28).to_dict()},
          "gap": 0.1, "gap_ci95": [0.0, 0.2], "params_beyond_data": 1500.0, "tokens_beyond_data": 15000.0}
    result = {"extrapolation": {"target": ladder.PAPER_POINT, "activation": "polynorm", "baseline": "swiglu",
                                "max_compute_in_data": 1e14, "decades_beyond_data": 7.0, "lines": {},
                                "chinchilla": ch}}
    text = ladder.markdown_extrapolation(result)
    assert "not determined by these data" in text and "polynorm's E" in text and "swiglu's" not in text


def ladder_rows(budgets, loss_of, acts=("swiglu", "polynorm"), seeds=2, noise=0.004):
    """Rows as ``load_ladder_runs`` gives them, on the CPU ladder's rungs, without run folders."""
    rng = np.random.default_rng(0)
    rows = []
    for rung in ladder.ladder_rungs("cpu").values():
        for budget in budgets:
            tokens = rung.budgets[budget]
            c = compute_of(rung, tokens)
            for act in acts:
                for s in range(seeds):
                    rows.append({"activation": act, "seed": s, "rung": rung.name, "budget": budget,
                                 "params": rung.params, "tokens": tokens, "compute": c, "lr": 2e-3,
                                 "loss": loss_of(act, c, budget) + rng.normal(0, noise), "tokens_per_s": TPS[act]})
    return rows


def _one_line_loss(act, c, budget):
    return baseline_loss(true_multiplier(act, c) * c, budget)


@pytest.mark.parametrize("case", ["one D/N line", "two N", "two D"])
def test_chinchilla_refuses_points_that_do_not_identify_it(case):
    """On one tokens-per-parameter line log N and log D are collinear (extrapolations off by >1 nat); two distinct N
    (or D) leave E, that term's coefficient and its exponent unseparated."""
    n = {"one D/N line": np.geomspace(1e5, 1e7, 6), "two N": np.repeat([1e5, 1e6], 3),
         "two D": np.tile([1e5, 1e6, 1e7], 2)}[case]
    d = {"one D/N line": 20 * n, "two N": n * np.tile([5, 20, 80], 2), "two D": np.repeat([2e6, 2e7], 3)}[case]
    with pytest.raises(ValueError, match="3 distinct N and >= 3 distinct D, with tokens per parameter"):
        scaling.fit_chinchilla(n, d, 1.8 + 400 * n**-0.34 + 4000 * d**-0.28)


def test_one_budget_line_skips_l_n_d_and_says_why():
    result = ladder.fit_ladder(ladder_rows(["t20"], _one_line_loss), replicates=20, chinchilla_replicates=5)
    ch = result["extrapolation"]["chinchilla"]
    assert "gap" not in ch and "D/N spanning" in ch["skipped"] and ch["skipped"].startswith("polynorm: ")
    assert "| L(N, D) | not fitted: polynorm: L(N, D) needs" in ladder.markdown(result)


def test_chinchilla_refit_from_a_start_on_a_bound():
    """A start at the bound a = 50 (as a fit's result can be) rebuilt through exp/log lands an ulp outside it: it is
    clipped back, not refused by scipy."""
    n = np.repeat([1e5, 2.4e5, 4.4e5, 8e5], 2)
    d = np.array([5, 20] * 4) * n
    mn = np.log(n).mean()
    alpha = next(a for a in np.linspace(0, 3, 3001) if math.log(float(np.exp(50 + a * mn))) - a * mn > 50)
    start = scaling.Chinchilla(E=1.8, A=float(np.exp(50 + alpha * mn)), alpha=float(alpha), B=4000.0, beta=0.28)
    fit = scaling.fit_chinchilla(n, d, 1.8 + 400 * n**-0.34 + 4000 * d**-0.28, start=start)
    assert (fit.E, fit.alpha, fit.beta) == pytest.approx((1.8, 0.34, 0.28), rel=1e-4)


def test_chinchilla_fit_that_does_not_converge_is_an_error(monkeypatch):
    from scipy import optimize

    real = optimize.least_squares
    monkeypatch.setattr(optimize, "least_squares", lambda *a, **k: real(*a, **{**k, "max_nfev": 2}))
    n = np.repeat([1e5, 2.4e5, 4.4e5, 8e5], 2)
    d = np.array([5, 20] * 4) * n
    with pytest.raises(scaling.FitError, match="did not converge"):
        scaling.fit_chinchilla(n, d, 1.8 + 400 * n**-0.34 + 4000 * d**-0.28)


def test_a_bootstrap_refit_that_fails_is_left_out_and_counted(monkeypatch):
    real, calls = scaling.fit_chinchilla, []

    def every_third_refit_fails(*args, start=None):
        calls.append(start)
        if start is not None and len(calls) % 3 == 0:
            raise scaling.FitError("did not converge")
        return real(*args, start=start)

    monkeypatch.setattr(scaling, "fit_chinchilla", every_third_refit_fails)
    result = ladder.fit_ladder(ladder_rows(["t5", "t20"], _one_line_loss), replicates=20, chinchilla_replicates=9)
    ch = result["extrapolation"]["chinchilla"]
    # 2 main fits, then 2 refits per replicate: calls 3, 6, ..., 18 fail, in replicates 1, 2, 4, 5, 7, 8
    assert ch["replicates_used"] == 3 and all(math.isfinite(x) for x in ch["gap_ci95"])


def test_power_law_needs_three_distinct_computes():
    c = np.array([1e12, 1e12, 1e14, 1e14])  # 4 points, 2 computes: alpha not identified
    with pytest.raises(ValueError, match=">= 3 distinct computes"):
        scaling.fit_power_law(c, 2 + 3000 * c**-0.25 + np.array([0.01, -0.01, 0.005, -0.005]))
    rows = [r for r in ladder_rows(["t5", "t20"], _one_line_loss) if not (r["budget"] == "t5" and r["rung"] in
                                                                           ("r1", "r2"))]
    result = ladder.fit_ladder(rows, replicates=20, chinchilla_replicates=5)  # t5: 2 rungs left, not fitted
    assert set(result["activations"]["swiglu"]["fits"]) == {"t20"}


def test_alpha_at_an_end_of_its_range_is_flagged_and_marked():
    c = np.geomspace(1e12, 1e15, 5)
    assert not scaling.fit_power_law(c, 1.7 + 0.8 * (c / 3e13) ** -0.31).at_bound
    for y in (np.full(5, 3.0), 3.0 + 0.1 * np.arange(5), 2.0 + 1e20 * c**-3.5):  # flat, rising, steeper than 3
        fit = scaling.fit_power_law(c, y)
        assert fit.at_bound and fit.to_dict()["alpha_at_bound"], fit
    flat = lambda act, c, budget: 3.0 if act == "polynorm" else _one_line_loss(act, c, budget)  # noqa: E731
    text = ladder.markdown(ladder.fit_ladder(ladder_rows(["t5", "t20"], flat, noise=0.0), replicates=20,
                                             chinchilla_replicates=5))
    marked = [line for line in text.splitlines() if " ‡ " in line]
    assert len(marked) == 2 and all("| polynorm |" in line for line in marked), marked
    assert "‡ α at an end of its range [0.001, 3]" in text


def test_trend_counts_distinct_computes():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 once warned and returned nan by accident
        assert math.isnan(scaling.trend([1e12, 1e12], [1.0, 2.0]))
        assert scaling.trend([1e12, 1e12, 1e13], [1.0, 1.0, 10.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 computes but 3 multipliers"):
        scaling.trend([1e12, 1e13], [1.0, 1.0, 2.0])


def test_bootstrap_is_paired_pooled_and_widened_to_t():
    from scipy import stats

    cells = {(("r1", "t5"), "a"): {0: 1.0, 1: 2.0, 2: 6.0}, (("r1", "t5"), "b"): {0: 10.0, 1: 20.0, 2: 60.0},
             (("r2", "t5"), "a"): {0: 3.0}}
    s2 = np.var([1.0, 2.0, 6.0], ddof=1)
    widen = stats.t.ppf(0.975, 2) / stats.norm.ppf(0.975)  # 3 residuals, 1 cell: 2 degrees of freedom
    samples = list(scaling.bootstrap_cells(cells, 0, 20000))
    a = np.array([s[(("r1", "t5"), "a")] for s in samples])
    b = np.array([s[(("r1", "t5"), "b")] for s in samples])
    single = np.array([s[(("r2", "t5"), "a")] for s in samples])
    assert np.allclose(b - 30, 10 * (a - 3))  # the same seeds drawn for both activations of a group
    assert a.var() == pytest.approx(s2 / 3 * widen**2, rel=0.05)  # s^2 / n, at t's width
    assert single.var() == pytest.approx(s2 * widen**2, rel=0.05)  # a one-seed cell moves with a's pooled noise
    plain = list(scaling.bootstrap_cells(cells, 0, 20000, pooled=False))
    assert np.var([s[(("r1", "t5"), "a")] for s in plain]) == pytest.approx(s2 / 3, rel=0.05)
    assert {s[(("r2", "t5"), "a")] for s in plain} == {3.0}


def _replicates(cells, act, pooled=True, replicates=2000):
    samples = list(scaling.bootstrap_cells(cells, 0, replicates, pooled=pooled))
    return {key: np.array([s[key] for s in samples]) for key in cells if key[1] == act}


def test_pinned_inverse_passes_through_the_points_and_keeps_the_curvature():
    law = scaling.PowerLaw(E=2.0, a=3.0, alpha=0.3, c_ref=1e12)
    c = np.array([1e12, 1e13, 1e14])
    on = law(c)
    for target in (law(10**12.5), law(10**13.7)):  # points on the law: it is the law's inverse
        assert ladder.pinned_inverse(law, c, on, target) == (pytest.approx(float(law.inverse(target))), False)
    assert ladder.pinned_inverse(law, c, on, law(1e11)) == (pytest.approx(1e11), True)
    bumped = on + np.array([0.0, 0.1, 0.05])  # the middle point 0.1 above the law, the last 0.05
    assert ladder.pinned_inverse(law, c[::-1], bumped[::-1], bumped[1]) == (1e13, False)  # through each point
    # halfway (in ln C) between the first two points the residual is half of 0.1
    assert ladder.pinned_inverse(law, c, bumped, law(10**12.5) + 0.05)[0] == pytest.approx(10**12.5)
    # beyond the last point the law keeps that point's residual; at or below its floor there is no crossing
    assert ladder.pinned_inverse(law, c, bumped, 2.4) == (pytest.approx(float(law.inverse(2.35))), True)
    assert ladder.pinned_inverse(law, c, bumped, 2.05)[0] == math.inf


def test_pinned_multiplier_reads_the_baselines_cells_not_its_curve():
    """SwiGLU's r2 t20 cell 0.05 above its law (as a slow seed would put it): against its own fitted L(C) it is off
    the curve (self-multiplier != 1); pinned to its cells it reads 1 at every cell, and on the clean t5 line the
    pinned multiplier is the true one."""
    rungs = ladder.ladder_rungs("cpu")
    rows = []
    for r in rungs.values():
        for b in ("t5", "t20"):
            c = compute_of(r, r.budgets[b])
            for act, k in (("swiglu", 1.0), ("polynorm", K_CONST)):
                bump = 0.05 if (act, r.name, b) == ("swiglu", "r2", "t20") else 0.0
                rows += [dict(activation=act, seed=s, rung=r.name, budget=b, params=r.params, tokens=r.budgets[b],
                              compute=c, loss=baseline_loss(k * c, b) + bump + 1e-3 * s, lr=2e-3, tokens_per_s=1.0)
                         for s in range(2)]
    result = ladder.fit_ladder(rows, replicates=50, chinchilla_replicates=5)
    swiglu = {(c["rung"], c["budget"]): c for c in result["activations"]["swiglu"]["cells"]}
    assert all(c["multiplier_vs_cells"] == pytest.approx(1.0, rel=1e-9) for c in swiglu.values())
    assert abs(swiglu[("r2", "t20")]["multiplier"] - 1) > 0.03
    polynorm = {(c["rung"], c["budget"]): c for c in result["activations"]["polynorm"]["cells"]}
    assert polynorm[("r2", "t5")]["multiplier_vs_cells"] == pytest.approx(K_CONST, rel=0.02)  # the t5 line is clean
    text = ladder.markdown(result)
    assert "## Compute multiplier vs swiglu's L(C) pinned to its cells" in text


@pytest.mark.parametrize("pooled", [True, False])
def test_a_run_added_to_one_activation_leaves_the_others_draws(pooled):
    """A seed that other activations already have (no new (group, seed) source): the other activations' replicates
    are unchanged, value for value; and so are the intervals and p-values built on them."""
    losses = np.random.default_rng(1).normal(4.0, 0.05, size=40)
    it = iter(losses)
    groups = [("r1", "t5"), ("r1", "t20"), ("r2", "t5")]
    before = {(g, a): {s: float(next(it)) for s in range(3 if a != "swiglu" else 2)}
              for g in groups for a in ("relu", "gelu", "swiglu")}
    after = {k: dict(v) for k, v in before.items()}
    after[(("r1", "t5"), "swiglu")][2] = 4.3  # swiglu's seed 2 at r1 t5: relu and gelu have it
    for act in ("relu", "gelu"):
        old, new = _replicates(before, act, pooled), _replicates(after, act, pooled)
        assert all(np.array_equal(old[k], new[k]) for k in old)
    swiglu_old, swiglu_new = _replicates(before, "swiglu", pooled), _replicates(after, "swiglu", pooled)
    assert not np.array_equal(swiglu_old[(("r1", "t5"), "swiglu")], swiglu_new[(("r1", "t5"), "swiglu")])


def test_a_new_seed_source_moves_few_of_the_others_draws():
    """A seed no other activation had in its group joins the pool of sources: by consistent sampling it takes over a
    draw about 1 time in (number of sources); a shared sequential stream would have moved every replicate."""
    losses = iter(np.random.default_rng(2).normal(4.0, 0.05, size=200))
    groups = [(f"r{i}", b) for i in range(1, 5) for b in ("t5", "t20")]
    before = {(g, a): {s: float(next(losses)) for s in range(2)} for g in groups for a in ("relu", "swiglu")}
    after = {k: dict(v) for k, v in before.items()}
    after[(("r4", "t20"), "swiglu")][2] = 4.1  # source (r4 t20, seed 2) is new: 16 sources -> 17
    old, new = _replicates(before, "relu"), _replicates(after, "relu")
    moved = np.mean([np.mean(old[k] != new[k]) for k in old])
    assert 0 < moved < 0.25  # two draws per replicate, each moved with probability 1/17: ~0.11


def test_a_new_seed_source_moves_only_the_replicates_that_draw_it():
    """Where an activation lacks a drawn source it fills from its own residuals; those fills are fixed per cell and
    replicate, so a new source changes a cell's replicate only if it is among that replicate's draws of the cell's
    group (fills drawn from a stream consumed as needed would shift every later replicate of the cell)."""
    losses = iter(np.random.default_rng(3).normal(4.0, 0.05, size=200))
    groups = [(f"r{i}", b) for i in range(1, 5) for b in ("t5", "t20")]
    before = {(g, a): {s: float(next(losses)) for s in range(2)} for g in groups for a in ("relu", "swiglu")}
    before[(("r4", "t20"), "gelu")] = {s: float(next(losses)) for s in (0, 1, 3)}  # relu lacks (r4 t20, 3)
    after = {k: dict(v) for k, v in before.items()}
    after[(("r4", "t20"), "swiglu")][2] = 4.1  # a new source; r4 t20 keeps its 3 draws
    replicates = 2000
    old, new = _replicates(before, "relu", replicates=replicates), _replicates(after, "relu", replicates=replicates)
    sources = sorted({(g, s) for (g, _), by_seed in after.items() for s in by_seed})
    moved_any = 0
    for (group, act), values in old.items():
        draws = max(len(v) for (g, _), v in after.items() if g == group)
        index = scaling._consistent_draws(0, group, sources, draws, replicates)
        drew_new = (index == sources.index((("r4", "t20"), 2))).any(axis=0)
        changed = values != new[(group, act)]
        assert not np.any(changed & ~drew_new), (group, np.sum(changed & ~drew_new))
        moved_any += changed.sum()
    assert moved_any > 0


def test_lr_rule_interpolates_the_grid_optima_geometrically():
    assert ladder.best_lr([1e-3, 2e-3, 4e-3, 8e-3], [5.0, 4.6, 4.5, 5.2]) == (pytest.approx(4e-3), False)
    lr, edge = ladder.best_lr([1e-3, 2e-3, 4e-3, 8e-3], [5.0, 4.6, 4.6, 5.2], refine=True)
    assert not edge and lr == pytest.approx(math.sqrt(2e-3 * 4e-3), rel=1e-9)  # the vertex: 2e-3 and 4e-3 tie
    assert ladder.best_lr([1e-3, 2e-3], [4.0, 4.2]) == (pytest.approx(1e-3), True)
    rule, gamma = ladder.lr_rule(1e5, 8e-3, 8e5, 2e-3)
    assert gamma == pytest.approx(-2 / 3) and rule(2 * 1e5 * 2**0.5) == pytest.approx(8e-3 / 2, rel=1e-9)
    rungs = ladder.ladder_rungs("cpu")
    rows = [{"activation": "gelu", "rung": r, "lr": lr, "loss": abs(math.log(lr / best)) + 3}
            for r, best in (("r1", 4e-3), ("r4", 2e-3)) for lr in (1e-3, 2e-3, 4e-3, 8e-3)]
    table = ladder.lr_table(rows, rungs)["activations"]["gelu"]
    assert table["lr"]["r1"] == pytest.approx(4e-3, rel=0.01) and table["lr"]["r4"] == pytest.approx(2e-3, rel=0.01)
    assert 2e-3 < table["lr"]["r2"] < table["lr"]["r1"]


def test_report_reads_lr_grids_from_several_folders(tmp_path):
    """The lr-sensitivity table joins grids kept apart (the CPU study's own at r1 and the BabyLM study's at r4): a
    grid run at a ladder budget gets a multiplier against the baseline's L(C); one at another budget its loss gap to
    the baseline's best grid run at that rung and budget."""
    study = tmp_path / "study"
    rungs = make_study(study, seeds_per_cell=2)
    r1, r4 = rungs["r1"], rungs["r4"]
    t5 = r1.budgets["t5"]
    on_line = baseline_loss(K_CONST * compute_of(r1, t5), "t5")  # where polynorm's multiplier is K_CONST
    write_run(tmp_path / "grid_a" / "polynorm-r1", "polynorm", 0, r1, "t5", on_line, t5, lr=4e-3)
    grid = r4.budgets["grid"]
    for act, lr, loss in (("swiglu", 2e-3, 5.0), ("swiglu", 4e-3, 5.1), ("polynorm", 4e-3, 4.8)):
        write_run(tmp_path / "grid_b" / f"{act}-r4-{lr}", act, 0, r4, "grid", loss, grid, lr=lr)
    load_script("ladder").main(["report", str(study), "--grid", str(tmp_path / "grid_a"), "--grid",
                                str(tmp_path / "grid_b"), "--replicates", "50", "--chinchilla-replicates", "5"])
    table = (study / "ladder.md").read_text().split("sensitivity to lr", 1)[1]
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:-1]]
            for line in table.splitlines() if line.startswith("| polynorm") or line.startswith("| swiglu")}
    assert float(rows[("polynorm", "r1", "t5")][1]) == pytest.approx(K_CONST, rel=0.05)  # lr 0.002, 0.004 columns
    label = f"t{grid / r4.params:.2g}"
    assert rows[("polynorm", "r4", label)][1] == "-0.200 †" and rows[("swiglu", "r4", label)][0] == "+0.000 †"


def test_report_against_another_baseline_goes_to_its_own_folder(tmp_path):
    study = tmp_path / "study"
    make_study(study, seeds_per_cell=2)
    load_script("ladder").main(["report", str(study), "--baseline", "gelu", "--out-dir", str(study / "vs-gelu"),
                                "--replicates", "50", "--chinchilla-replicates", "5"])
    assert not (study / ladder.FIT_FILE).exists() and not (study / "ladder.md").exists()
    result = json.loads((study / "vs-gelu" / ladder.FIT_FILE).read_text())
    assert result["baseline"] == "gelu" and "swiglu" in result["activations"]
    text = (study / "vs-gelu" / "ladder.md").read_text()
    assert "polynorm − gelu at the target" in text and "-0.02" not in text  # the paper has no PolyNorm - GELU gap
    assert (study / "vs-gelu" / "multiplier_vs_compute.png").is_file()


def test_lr_command_prints_a_rungs_overrides(tmp_path, capsys):
    rungs = ladder.ladder_rungs("cpu")
    for rung, best in (("r1", 4e-3), ("r4", 2e-3)):
        for lr in (1e-3, 2e-3, 4e-3, 8e-3):
            for act in ("swiglu", "polynorm"):
                loss = 3 + abs(math.log(lr / best)) * (1 if act == "swiglu" else 2)
                tokens = rungs[rung].budgets["grid"]
                write_run(tmp_path / f"{act}-{rung}-{lr}", act, 0, rungs[rung], "grid", loss, tokens, lr=lr)
    load_script("ladder").main(["lr", str(tmp_path), "--ladder", "cpu", "--overrides", "r4"])
    out = capsys.readouterr().out.split()
    assert len(out) == 2 and out[0].startswith("ladder.lr.swiglu=0.002") and out[1].startswith("ladder.lr.polynorm")


def test_plan_prints_hours_from_measured_tokens_per_s(capsys):
    load_script("ladder").main(["plan", "experiment=ladder_cpu", "ladder=cpu_r1,cpu_r2", "ladder.budget=t5",
                                "activation=swiglu,gelu", "seed=0,1,2", "--tokens-per-s", "r1=20000,r2=10000"])
    out = capsys.readouterr().out
    rungs = ladder.ladder_rungs("cpu")
    expected = 6 * (rungs["r1"].budgets["t5"] / 20000 + rungs["r2"].budgets["t5"] / 10000) / 3600
    assert f"{expected:.1f} hours in all" in out and "| r2 | 0.239M |" in out


def test_fitting_a_ladder_needs_no_torch():
    import subprocess
    import sys

    code = ("import sys, polycom.report.ladder, polycom.report.scaling, polycom.report.ladder_plots; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

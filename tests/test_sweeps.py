"""Sweeps through the real entry point: `python train.py -m ...` with Hydra's basic launcher, then the
summary scripts on the sweep folder."""

import csv
import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from scripts_loader import load_script
from test_train import TINY

summarize = load_script("summarize")


def multirun(sweep_dir, *overrides):
    result = subprocess.run(
        [sys.executable, "train.py", "-m", *TINY, "trainer.max_steps=3", "eval.interval=3", *overrides,
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sorted(p.parent for p in sweep_dir.glob("*/summary.json"))


@pytest.mark.slow
def test_multirun_over_activations_and_seeds_gives_a_run_each_and_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    runs = multirun(sweep, "activation=gelu,polynorm", "seed=0,1")
    assert len(runs) == 4 and len({p.name for p in runs}) == 4  # one folder per job, none shared
    summaries = [json.loads((p / "summary.json").read_text()) for p in runs]
    seen = {(s["activation"], s["seed"]) for s in summaries}
    assert seen == {("gelu", 0), ("gelu", 1), ("polynorm", 0), ("polynorm", 1)}
    summarize.main([str(sweep), "--out-dir", str(tmp_path / "study"), "--baseline", "gelu"])
    text = (tmp_path / "study" / "summary.md").read_text()
    assert "| metric | gelu (n=2) | polynorm (n=2) |" in text
    assert "| val_loss | " in text and "Paired difference vs gelu" in text


@pytest.mark.slow
def test_lr_grid_multirun_is_summarized_per_learning_rate(tmp_path):
    sweep = tmp_path / "lr"
    runs = multirun(sweep, "hparams_search=lr_grid", "optim.lr=1e-3,3e-3", "activation=swiglu")
    assert len(runs) == 2  # the command-line grid replaced the config's four values
    summarize.main([str(sweep), "--out-dir", str(tmp_path / "study"), "--by", "optim.lr"])
    rows = list(csv.DictReader(open(tmp_path / "study" / "results.csv")))
    assert sorted(float(r["optim.lr"]) for r in rows) == [1e-3, 3e-3]
    text = (tmp_path / "study" / "summary.md").read_text()
    assert "| activation | optim.lr=0.001 | optim.lr=0.003 | best |" in text
    with pytest.raises(SystemExit):  # without --by the two lrs would be averaged as seeds: refused
        summarize.main([str(sweep), "--out-dir", str(tmp_path / "mixed")])

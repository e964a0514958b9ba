"""W&B runs say what they are: a logger chosen on the command line beats debug=smoke's default, single runs get a
group naming task, model and data, and names carry the activation's non-default settings (order, eps)."""

import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from polycom.train import trainer as trainer_module
from polycom.train.tracking import MetricsLogger, default_run_name, run_group
from test_train import TINY, _train, compose_train

pytestmark = pytest.mark.usefixtures("one_thread")


def _wandb_on(cfg) -> bool:
    return cfg.logger.name == "wandb" and cfg.logger.mode != "disabled"


@pytest.mark.parametrize("overrides", [["debug=smoke", "logger=wandb"], ["logger=wandb", "debug=smoke"]])
def test_a_logger_chosen_on_the_command_line_beats_debug_smoke(overrides):
    assert _wandb_on(compose_train(overrides))


def test_debug_smoke_alone_logs_no_wandb_run():
    assert not _wandb_on(compose_train(["debug=smoke"]))


def test_polyrelu_orders_and_a_changed_eps_get_distinct_names_and_single_runs_a_descriptive_group(tmp_path,
                                                                                                 monkeypatch):
    seen = []

    class Recording(MetricsLogger):
        def __init__(self, run_dir, logger_cfg, run_name, group, *args, **kwargs):
            seen.append((run_name, group))
            super().__init__(run_dir, logger_cfg, run_name, group, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "MetricsLogger", Recording)
    for order in (2, 3):
        _train(tmp_path / str(order), ["activation=polyrelu", f"activation.order={order}", "trainer.max_steps=3",
                                       "trainer.save_hf=false"])
    assert seen == [("polyrelu-r2-s0", "train-d64x2-embedded"), ("polyrelu-s0", "train-d64x2-embedded")]
    assert default_run_name(compose_train(["activation.eps=1e-5", "seed=2"])) == "polynorm-s2-eps1e-05"
    assert default_run_name(compose_train(["activation=gelu", "activation.order=2"])) == "gelu-s0"  # no order


def test_the_group_names_hydras_choices_or_the_sweep_or_the_configured_group():
    cfg = compose_train(["model=tiny", "data=tinyshakespeare"], hydra=True)
    assert run_group(cfg, cfg.hydra) == "train-tiny-tinyshakespeare"
    assert run_group(compose_train(["experiment=compare_activations"])) == "compare_activations"


@pytest.mark.slow
def test_train_py_names_and_groups_the_wandb_run(tmp_path):
    """As a user runs it: debug=smoke logger=wandb really logs to W&B (here: WANDB_MODE=disabled, set for every
    test, still creates the sink), named with the order and grouped by task, model and data."""
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("logger=")]
    result = subprocess.run([sys.executable, "train.py", *overrides, "logger=wandb", "activation=polyrelu",
                             "activation.order=2", "trainer.max_steps=3", "trainer.save_hf=false",
                             f"hydra.run.dir={run_dir}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wandb run polyrelu-r2-s0 in group train-tiny-embedded" in (run_dir / "train.log").read_text()

"""A refused launch: one line naming the key (with the key meant), exit status 2, and nothing written: no empty
timestamped folder, no overwritten `.hydra/` of the run already in `hydra.run.dir`."""

import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from polycom.train.cli import describe
from polycom.train.validate import ConfigError, suggest, validate_config
from test_train import TINY, compose_train


def _launch(*overrides, flags=(), timeout=600):
    return subprocess.run([sys.executable, "train.py", *flags, *TINY, *overrides], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _refused(result, *expected: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def existing_run(tmp_path):
    """A run folder as a finished run leaves it (the parts a launch could overwrite)."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run / ".hydra" / name).write_text(f"the original {name}\n")
    (run / "config_fingerprint.txt").write_text("0123456789abcdef")
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    return run, before


def _unchanged(run, before):
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("override,meant", [("+trainer.max_step=10", "did you mean trainer.max_steps?"),
                                            ("trainer.max_step=10", "did you mean trainer.max_steps?"),
                                            ("++trainer.lr=0.01", "did you mean optim.lr")])
def test_a_misspelt_key_is_refused_before_the_run_folder_is_touched(existing_run, override, meant):
    run, before = existing_run
    _refused(_launch(override, f"hydra.run.dir={run}"), "config error:", meant)
    _unchanged(run, before)


def test_a_fresh_run_into_a_folder_with_checkpoints_leaves_its_hydra_files_alone(existing_run):
    run, before = existing_run
    _refused(_launch(f"hydra.run.dir={run}"), "already holds checkpoints", "trainer.resume=auto")
    _unchanged(run, before)


@pytest.mark.parametrize("override,expected", [
    ("trainer.seq_len=1", "trainer.seq_len=1 must be > 1"),
    ("trainer=defualt", "did you mean trainer=default?"),
    ("trainer.max_steps=lots", "trainer.max_steps"),
])
def test_a_bad_value_or_option_leaves_no_timestamped_folder(tmp_path, override, expected):
    _refused(_launch(override, f"paths.log_dir={tmp_path / 'outputs'}"), expected)
    assert not (tmp_path / "outputs").exists()


def test_a_misspelt_key_in_a_sweep_is_refused_before_the_sweep_folder_exists(tmp_path):
    sweep = tmp_path / "sweep"
    _refused(_launch("+trainer.max_step=10", "seed=0,1", f"hydra.sweep.dir={sweep}", flags=["-m"]),
             "did you mean trainer.max_steps?")
    assert not sweep.exists()


def test_keys_added_with_plus_are_checked_against_the_schema():
    cfg = compose_train(TINY + ["+trainer.max_step=10"])
    with pytest.raises(ConfigError, match=r"trainer\.max_step is not a config key; did you mean trainer\.max_steps\?"):
        validate_config(cfg)


@pytest.mark.parametrize("key,meant", [("trainer.max_step", "trainer.max_steps"), ("activaton", "activation"),
                                       ("trainer.lr", "optim.lr"), ("model.hiden_size", "model.hidden_size"),
                                       ("trainer.zzz_unrelated", None)])
def test_suggest_finds_the_key_meant(key, meant):
    found = suggest(key)
    assert found == meant if meant is None else meant in found.split(" or ")


def test_hydra_composition_errors_become_one_line():
    with pytest.raises(Exception) as err:
        compose_train(["activation=polynrom"])
    assert describe(err.value).startswith("activation=polynrom: no such option; did you mean activation=polynorm?")
    with pytest.raises(Exception) as err:
        compose_train(["activaton=gelu"])
    assert describe(err.value) == "activaton is not a config key; did you mean activation?"

"""A resume continues the run it names or stops: a changed config is compared before anything is built, and the end of
a run (final validation, summary, export) is redone by a resume until it succeeded."""

import errno
import json

import pytest

from polycom import config_diff
from polycom.train.validate import ConfigError
from scripts_loader import load_script
from test_train import SAME_LOSS, _losses, _train, compose_train

pytestmark = pytest.mark.usefixtures("one_thread")
summarize = load_script("summarize")
RUN = ["trainer.log_interval=1", "eval.interval=2", "trainer.checkpoint_interval=100"]


def test_what_a_resume_may_change_is_classified_by_key():
    old = compose_train(RUN)
    changed = compose_train(RUN + ["seed=7", "data=tinyshakespeare", "activation=gelu", "optim.lr=1e-3",
                                   "trainer.max_steps=30", "eval.interval=5", "trainer.checkpoint_interval=7",
                                   "logger=none", "trainer.micro_batch_size=2", "parallel=fsdp"])
    kinds = {c.key: c.kind for c in config_diff.differences(old, changed)[0]}
    assert {k for k, v in kinds.items() if v == config_diff.DEFINES} >= {"seed", "activation.name", "optim.lr",
                                                                          "data.source", "data.train_files"}
    assert kinds["trainer.max_steps"] == config_diff.EXTENDS
    for key in ("eval.interval", "trainer.checkpoint_interval", "logger.name", "trainer.micro_batch_size",
                "parallel.name"):
        assert kinds[key] == config_diff.OBSERVES, key
    assert config_diff.kind("trainer.activation_checkpointing") == config_diff.OBSERVES  # memory, not the math
    for key in ("eval.val_tokens", "trainer.seq_len", "trainer.global_batch_size", "trainer.mixed_precision",
                "schedule.warmup_steps", "tokenizer.vocab_size", "parallel.param_dtype", "a.key.added.later"):
        assert config_diff.kind(key) == config_diff.DEFINES, key
    assert config_diff.kind("trainer.resume") is config_diff.kind("trainer.stop_after") is None  # the session's


def test_a_resume_that_changes_what_is_trained_stops_before_anything_is_built(tmp_path, monkeypatch):
    _train(tmp_path, RUN + ["trainer.max_steps=4"])
    import polycom.train.trainer as trainer

    def built(*args, **kwargs):
        raise AssertionError("the tokenizer was built before the config was compared")

    monkeypatch.setattr(trainer, "build_tokenizer", built)
    with pytest.raises(ConfigError) as seed:
        _train(tmp_path, RUN + ["trainer.max_steps=6", "seed=7", "trainer.resume=auto"])
    message = str(seed.value)
    assert "\n" not in message and "seed: 0 -> 7" in message and "trainer.resume_allow_changes=[seed]" in message
    assert "max_steps" not in message  # extending is allowed, and not named among the refused changes
    with pytest.raises(ConfigError, match=r"data\.source: embedded -> local.*data\.train_files"):
        _train(tmp_path, RUN + ["trainer.max_steps=6", "data=tinyshakespeare", "trainer.resume=auto"])


def test_an_allowed_change_continues_and_every_change_is_recorded_in_the_summary(tmp_path):
    _train(tmp_path, RUN + ["trainer.max_steps=4"])
    summary = _train(tmp_path, RUN + ["trainer.max_steps=6", "seed=7", "trainer.resume_allow_changes=[seed]",
                                      "trainer.resume=auto"])
    assert summary["seed"] == 7 and summary["steps"] == 6
    assert [r["step"] for r in _losses(tmp_path)] == list(range(1, 7))
    changes = {c["key"]: c for c in summary["config_changes"]}
    assert changes["seed"] == {"step": 4, "key": "seed", "old": 0, "new": 7, "override": True}
    assert changes["trainer.max_steps"] == {"step": 4, "key": "trainer.max_steps", "old": 4, "new": 6,
                                            "override": False}
    # the checkpoint at 6 was trained with seed 7: continuing it with seed 7 needs no override, and the record
    # of the earlier sessions' changes is kept
    again = _train(tmp_path, RUN + ["trainer.max_steps=8", "seed=7", "eval.interval=4", "trainer.resume=auto"])
    assert again["steps"] == 8 and [(c["step"], c["key"]) for c in again["config_changes"]] == [
        (4, "seed"), (4, "trainer.max_steps"), (6, "eval.interval"), (6, "trainer.max_steps")]


def _full_disk_in_export(monkeypatch):
    """The HF export dies where a full disk kills it: writing the weights, after config and code are written."""
    import transformers.modeling_utils

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", no_space)


def test_a_run_whose_export_hit_a_full_disk_is_finished_by_a_resume(tmp_path, monkeypatch):
    run = RUN + ["trainer.max_steps=4"]
    _full_disk_in_export(monkeypatch)
    with pytest.raises((OSError, RuntimeError), match="No space left on device"):
        _train(tmp_path, run)
    monkeypatch.undo()
    logged = _losses(tmp_path)
    summary = _train(tmp_path, run + ["trainer.resume=auto"])
    assert summary["complete"] and summary["val_loss"] == pytest.approx(logged[-1]["val_loss"], abs=SAME_LOSS)
    assert (tmp_path / "hf" / "model.safetensors").is_file() and _losses(tmp_path) == logged  # nothing trained
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_a_run_killed_after_its_last_checkpoint_gets_its_final_evaluation_on_resume(tmp_path):
    run = RUN + ["trainer.max_steps=4"]
    first = _train(tmp_path, run)
    (tmp_path / "summary.json").unlink()  # killed between the final checkpoint and the summary
    summary = _train(tmp_path, run + ["trainer.resume=auto"])
    assert summary["val_loss"] == pytest.approx(first["val_loss"], abs=SAME_LOSS)
    assert summary["final_train_loss"] == first["final_train_loss"] and summary["steps"] == 4
    assert [r["step"] for r in _losses(tmp_path)] == [1, 2, 3, 4]  # no step trained or logged twice


def _write(run, summary=None, metrics=()):
    run.mkdir(parents=True)
    if summary is not None:
        (run / "summary.json").write_text(json.dumps({"activation": "gelu", "seed": 0, "tokens": 10, "steps": 4,
                                                      "val_ppl": 3.0, **summary}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))


def test_summarize_names_the_runs_it_skips_and_why(tmp_path, capsys):
    _write(tmp_path / "good", {"val_loss": 1.1, "complete": True})
    _write(tmp_path / "no_val", {"val_loss": None, "complete": True}, [{"step": 4, "tokens": 10, "loss": 2.0}])
    _write(tmp_path / "stopped", {"val_loss": 1.5, "complete": False, "planned_steps": 8})
    _write(tmp_path / "killed", metrics=[{"step": 2, "tokens": 5, "loss": 3.0}])
    summarize.main([str(tmp_path), "--out-dir", str(tmp_path / "out"), "--baseline", "gelu"])
    err = capsys.readouterr().err
    assert "skipped 3 run(s)" in err
    assert f"{tmp_path / 'no_val'}: no validation loss" in err
    assert f"{tmp_path / 'stopped'}: training stopped at step 4 of 8" in err
    assert f"{tmp_path / 'killed'}: no summary.json" in err and "trainer.resume=auto" in err
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and "good" in rows[1]

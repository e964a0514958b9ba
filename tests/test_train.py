"""The training app: config composition and schema, end-to-end runs, resume, bad config keys."""

import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from polycom.eval.downstream import COUNTS
from polycom.model.activations import ACTIVATIONS
from polycom.train.build import compose_config
from polycom.train.config import register_schema

register_schema()
CONFIGS = REPO_ROOT / "configs"
GROUPS = ["model", "activation", "data", "tokenizer", "optim", "schedule", "trainer", "eval", "logger", "paths",
          "debug", "experiment", "hparams_search"]
TINY = ["model=tiny", "debug=smoke", "logger=none", "tokenizer.vocab_size=512", "trainer.progress_bar=false"]


def compose_train(overrides=(), hydra=False):
    return compose_config(overrides, return_hydra_config=hydra)


def group_options():
    for group in GROUPS:
        for path in sorted((CONFIGS / group).glob("*.yaml")):
            yield group, path.stem


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_group_option_composes(group, option):
    cfg = compose_train([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # interpolations resolve
    assert cfg.model.hidden_size > 0


def test_hydra_group_composes_with_unique_multirun_dirs():
    cfg = compose_train(hydra=True)
    assert "${hydra.job.num}" in OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]


def test_misspelled_key_names_the_key():
    with pytest.raises(Exception, match="max_stepz"):
        compose_train(["trainer.max_stepz=5"])


def test_wrong_type_names_the_key():
    with pytest.raises(Exception, match="max_steps"):
        compose_train(["trainer.max_steps=lots"])


def test_misspelled_key_in_a_yaml_file_names_the_key(tmp_path):
    bad = tmp_path / "configs"
    subprocess.run(["cp", "-r", str(CONFIGS), str(bad)], check=True)
    (bad / "optim" / "adamw.yaml").write_text((bad / "optim" / "adamw.yaml").read_text() + "\nweight_decy: 0.1\n")
    with initialize_config_dir(config_dir=str(bad), version_base="1.3"):
        with pytest.raises(Exception, match="weight_decy"):
            compose("train")


def _train(tmp_path, overrides):
    from polycom.train.trainer import train

    cfg = compose_train(TINY + list(overrides))
    return train(cfg, tmp_path)


def _losses(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# How close a resumed run's numbers must come to the uninterrupted run's (fp32, CPU). Resumes are bit-exact in
# practice; the tolerance (2 ulps of a loss near 6) absorbs a rare last-bit difference in a BLAS reduction.
SAME_LOSS = 1e-6


def assert_same_losses(run_dir, reference_dir, steps: int) -> None:
    """Both runs logged steps 1..steps, each once, with losses equal to within SAME_LOSS."""
    a, b = _losses(run_dir), _losses(reference_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, steps + 1))  # none missing, none twice
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= SAME_LOSS, (x["step"], x["loss"], y["loss"])


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_short_run_lowers_the_loss_and_writes_summary(tmp_path, activation):
    summary = _train(tmp_path, [f"activation={activation}", "trainer.max_steps=40", "optim.lr=5e-3",
                                "trainer.checkpoint_interval=100", "trainer.log_interval=1"])
    records = _losses(tmp_path)
    losses = [r["loss"] for r in records]
    assert records[0]["step"] == 1 and sum(losses[-5:]) / 5 < losses[0] - 0.5, losses
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    for key in ("activation", "seed", "num_params", "tokens", "steps", "val_loss", "val_ppl", "wall_seconds"):
        assert written[key] is not None, key
    assert written["activation"] == activation and written["steps"] == 40
    assert written["tokens"] == 40 * 8 * 128
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "tokenizer.json").exists()
    if ACTIVATIONS[activation].polycom:
        assert "polycom/layer0/a0" in records[-1]


@pytest.mark.slow
def test_a_compiled_run_exports_its_trained_weights_under_their_plain_names(tmp_path):
    """torch.compile names the weights ``_orig_mod.<name>``: the export must not carry that into the HF folder,
    where from_pretrained would match none of them and silently start from random weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _train(tmp_path, ["activation=polynorm", "trainer.compile=true", "trainer.max_steps=4", "trainer.log_interval=1"])
    assert "polycom/layer0/a0" in _losses(tmp_path)[-1]  # coefficients are read through the compiled wrapper
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True,
                                                       output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    (final,) = (tmp_path / "checkpoints").glob("step_*4")
    trained = {name.replace("_orig_mod.", ""): value for name, value in load_file(final / "model.safetensors").items()}
    exported = model.state_dict()
    assert trained.keys() <= exported.keys()
    for name, value in trained.items():
        assert torch.equal(exported[name], value), name


def test_in_loop_downstream_metrics_reach_metrics_and_summary(tmp_path, data_dir):
    summary = _train(tmp_path, ["trainer.max_steps=4", "eval.downstream=[arc_easy,blimp]",
                                "eval.downstream_limit=4", "eval.downstream_interval=2",
                                f"eval.data_dir={data_dir / 'downstream'}"])
    with_downstream = [r for r in _losses(tmp_path) if "arc_easy/acc" in r]
    assert [r["step"] for r in with_downstream] == [2, 4]
    assert 0 <= summary["arc_easy/acc"] <= 1 and 0 <= summary["blimp/acc"] <= 1
    assert summary["arc_easy/acc"] == with_downstream[-1]["arc_easy/acc"]
    # BLiMP's breakdowns reach the summary too: every paradigm (its acc is their macro mean) and phenomenon group
    paradigms = {k: v for k, v in summary.items() if k.startswith("blimp/paradigm/")}
    phenomena = {k: v for k, v in summary.items() if k.startswith("blimp/phenomenon/")}
    assert len(paradigms) == 67 and 10 <= len(phenomena) < 67
    assert summary["blimp/acc"] == pytest.approx(sum(paradigms.values()) / 67)
    # besides its metrics, a task reports only its counts (examples scored, left out, skipped, tied)
    counts = {f"arc_easy/{count}" for count in COUNTS}
    assert all(0 <= v <= 1 for v in phenomena.values()) and not any(
        k.startswith("arc_easy/") for k in set(summary) - {"arc_easy/acc", "arc_easy/acc_norm"} - counts)
    assert summary["arc_easy/n"] + summary.get("arc_easy/too_long", 0) == 4


def test_failing_downstream_eval_keeps_checkpoint_model_and_summary_then_fails(tmp_path, data_dir, monkeypatch):
    import polycom.eval

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(polycom.eval, "evaluate_tasks", broken)
    with pytest.raises(RuntimeError, match="downstream evaluation failed.*disk gone"):
        _train(tmp_path, ["trainer.max_steps=4", "eval.downstream=[arc_easy]",
                          f"eval.data_dir={data_dir / 'downstream'}"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] and summary["val_loss"] is not None and "disk gone" in summary["downstream_error"]
    assert (tmp_path / "hf" / "model.safetensors").exists() and list((tmp_path / "checkpoints").glob("step_*4"))


def test_resume_gives_identical_per_step_losses(tmp_path, monkeypatch):
    from polycom.data import packing
    from polycom.train import checkpoint as ckpt

    common = ["trainer.max_steps=12", "trainer.log_interval=1", "trainer.checkpoint_interval=100",
              "eval.interval=100"]
    straight = tmp_path / "straight"
    _train(straight, common)
    resumed = tmp_path / "resumed"
    _train(resumed, common + ["trainer.stop_after=6"])
    assert json.loads((resumed / "summary.json").read_text())["complete"] is False
    saved = ckpt.read_trainer_state(ckpt.latest_valid_checkpoint(resumed))
    (position,) = saved["data_positions"]  # one process: one stream position, after the blocks of 6 steps
    assert position["blocks_emitted"] == 6 * compose_train(TINY).trainer.global_batch_size

    def fast_forward(*args):
        raise AssertionError("the resume re-tokenized instead of starting at the saved data position")

    monkeypatch.setattr(packing, "_log_fast_forward", fast_forward)
    _train(resumed, common + ["trainer.resume=auto"])
    assert_same_losses(resumed, straight, 12)
    final_a = json.loads((straight / "summary.json").read_text())
    final_b = json.loads((resumed / "summary.json").read_text())
    assert final_a["val_loss"] == pytest.approx(final_b["val_loss"], abs=SAME_LOSS) and final_b["steps"] == 12


EXTEND = ["activation=gelu", "seed=1", "trainer.log_interval=1", "trainer.checkpoint_interval=6", "eval.interval=100"]




@pytest.mark.parametrize("schedule", ["constant", "wsd"])
def test_extending_a_finished_run_equals_the_straight_run(tmp_path, caplog, schedule):
    """6 steps, then trainer.max_steps raised to 12 and resumed = 12 steps straight (schedule, data position, RNG,
    optimizer all restored). wsd continues from its kept pre-decay checkpoint, not the decayed end of the 6."""
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    _train(straight, EXTEND + [f"schedule={schedule}", "trainer.max_steps=12"])
    first = _train(extended, EXTEND + [f"schedule={schedule}", "trainer.max_steps=6"])
    assert first["complete"] and first["steps"] == 6
    with caplog.at_level("WARNING"):
        summary = _train(extended, EXTEND + [f"schedule={schedule}", "trainer.max_steps=12", "trainer.resume=auto"])
    assert_same_losses(extended, straight, 12)
    assert summary["val_loss"] == pytest.approx(json.loads((straight / "summary.json").read_text())["val_loss"], abs=SAME_LOSS)
    assert summary["steps"] == 12 and summary["schedule_changed_at_step"] is None
    if schedule == "wsd":  # decay over the last round(0.2 x 6) = 1 step: the update after step 5 is decayed
        assert "step_00000006" in caplog.text and "continuing from" in caplog.text and "step_00000005" in caplog.text
        assert json.loads((extended / "checkpoints" / "step_00000005" / "trainer_state.json").read_text())["keep"]
    else:
        assert "schedule" not in caplog.text


def test_extending_a_cosine_run_warns_and_records_where_the_schedule_changed(tmp_path, caplog):
    """cosine decays over the planned length, so a 6-step run extended to 12 legitimately differs from 12 straight."""
    _train(tmp_path, EXTEND + ["trainer.max_steps=6"])
    with caplog.at_level("WARNING"):
        summary = _train(tmp_path, EXTEND + ["trainer.max_steps=12", "trainer.resume=auto"])
    assert "learning-rate schedule changed" in caplog.text
    assert summary["schedule_changed_at_step"] == 3  # smoke: warmup 0-1, both cosines start at 1.0 (step 2), then part
    assert [r["step"] for r in _losses(tmp_path)] == list(range(1, 13))


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_summary(tmp_path):
    from polycom.train.validate import ConfigError

    first = _train(tmp_path, ["trainer.max_steps=4", "trainer.log_interval=1"])
    logged = _losses(tmp_path)
    again = _train(tmp_path, ["trainer.max_steps=4", "trainer.log_interval=1", "trainer.resume=auto"])
    assert again == json.loads(json.dumps(first)) and _losses(tmp_path) == logged
    with pytest.raises(ConfigError, match="past the 2 steps"):
        _train(tmp_path, ["trainer.max_steps=2", "schedule.warmup_steps=1", "trainer.resume=auto"])


def test_fresh_run_refuses_a_directory_with_checkpoints(tmp_path):
    from polycom.train.validate import ConfigError

    _train(tmp_path, ["trainer.max_steps=4"])
    with pytest.raises(ConfigError, match="trainer.resume=auto"):
        _train(tmp_path, ["trainer.max_steps=4"])


@pytest.mark.slow
def test_train_py_entry_point_runs_on_the_embedded_corpus(tmp_path):
    """`python train.py` as a user types it, through Hydra, with every output under hydra.run.dir."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", "activation=polyrelu", *TINY, "trainer.max_steps=6", f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["activation"] == "polyrelu" and summary["val_loss"] > 0
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "metrics.jsonl").exists()


@pytest.mark.parametrize("launcher", ["slurm", "submitit_slurm"])
def test_slurm_launcher_composes(launcher):
    cfg = compose_train([f"hydra/launcher={launcher}"], hydra=True)
    assert "SlurmLauncher" in cfg.hydra.launcher._target_


def test_wandb_offline_runs_are_named_grouped_and_never_merged(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen = []
    real_init = wandb.init

    def recording_init(**kwargs):
        run = real_init(**kwargs)
        seen.append((run.id, run.name, kwargs["group"], kwargs["config"]["activation"]["name"]))
        return run

    monkeypatch.setattr(wandb, "init", recording_init)
    overrides = ["logger=wandb", "logger.mode=offline", "trainer.max_steps=3", "logger.group=sweep-x"]
    for act in ("gelu", "polynorm"):
        _train(tmp_path / act, overrides + [f"activation={act}"])
    _train(tmp_path / "lr", overrides + ["hparams_search=lr_grid", "optim.lr=0.004"])  # an lr grid's run
    assert [s[1:] for s in seen] == [("gelu-s0", "sweep-x", "gelu"), ("polynorm-s0", "sweep-x", "polynorm"),
                                     ("polynorm-lr0.004-s0", "sweep-x", "polynorm")]
    assert seen[0][0] != seen[1][0]
    for act in ("gelu", "polynorm"):
        assert list((tmp_path / act / "wandb").glob("offline-run-*")), act

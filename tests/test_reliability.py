"""Faults a long run meets: kills, corrupt checkpoints, non-finite losses, bad configs, uneven shards."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT
from polycom.train import checkpoint as ckpt
from test_train import TINY, _losses, _train, assert_same_losses, compose_train
from test_distributed import LAUNCH, _env

FAULT_RUNNER = REPO_ROOT / "tests" / "faults" / "train_with_fault.py"
RUN = TINY + ["trainer.max_steps=16", "trainer.checkpoint_interval=4", "trainer.log_interval=1",
              "eval.interval=100", "trainer.keep_checkpoints=3"]


def _launch(run_dir: Path, extra=(), fault: str = "") -> subprocess.Popen:
    env = {**os.environ, "POLYCOM_TEST_FAULT": fault}
    return subprocess.Popen([sys.executable, str(FAULT_RUNNER), *RUN, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# generous: these tests must hold on a machine loaded enough that a step takes 20 s; nothing else waits on a clock
TIMEOUT = 3600


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-3000:]


def _killed(proc: subprocess.Popen, fault: str) -> None:
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, f"{fault} did not fire: exit {proc.returncode}\n{err[-3000:]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    _finish(_launch(run_dir))
    return run_dir


FAULTS = ("kill_in_step", "kill_after_log", "kill_in_save")


def three_faults(seed: int) -> list[str]:
    """Three kill points drawn at random (reproducibly), one in each of the windows of steps 1-4, 5-8 and 9-12,
    so each lies after the checkpoint the previous kill resumes from and every one of them fires."""
    rng = random.Random(seed)
    faults = []
    for window in range(3):
        kind = rng.choice(FAULTS)
        step = 4 * (window + 1) if kind == "kill_in_save" else rng.randint(4 * window + 1, 4 * window + 4)
        faults.append(f"{kind}:{step}")
    return faults


SEEDS = [0, 1, 5]  # between them: every kind of kill, and a kill before the first checkpoint (seed 5)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_three_kills_at_random_points_then_resume_matches_uninterrupted(tmp_path, uninterrupted, seed):
    """SIGKILL mid-step, right after a metrics line or mid-save, three times; then the newest checkpoint's weights
    are truncated. resume=auto falls back to the previous checkpoint and the run logs exactly the uninterrupted
    run's losses, each step once."""
    run_dir = tmp_path / "run"
    for i, fault in enumerate(three_faults(seed)):
        _killed(_launch(run_dir, ["trainer.resume=auto"] if i else [], fault=fault), fault)
    newest, previous = ckpt.list_checkpoints(run_dir)[-1], ckpt.list_checkpoints(run_dir)[-2]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _finish(_launch(run_dir, ["trainer.resume=auto"]))
    log = (run_dir / "train.log").read_text()
    assert f"resuming from {previous} instead" in log and "model.safetensors" in log
    assert_same_losses(run_dir, uninterrupted, 16)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_drawn_kill_points_cover_every_kind_and_window(seed):
    faults = three_faults(seed)
    steps = [int(f.split(":")[1]) for f in faults]
    assert all(4 * w < s <= 4 * (w + 1) for w, s in enumerate(steps))
    assert {f.split(":")[0] for s in SEEDS for f in three_faults(s)} == set(FAULTS)
    assert "kill_in_save:4" in three_faults(5)


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    _killed(_launch(run_dir, fault="kill_in_save:8"), "kill_in_save:8")
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step_00000004"]
    assert (run_dir / "checkpoints" / "step_00000008.tmp").is_dir()  # the half-written one, never used
    ckpt.verify(run_dir / "checkpoints" / "step_00000004")
    _finish(_launch(run_dir, ["trainer.resume=auto"]))
    assert_same_losses(run_dir, uninterrupted, 16)
    assert not (run_dir / "checkpoints" / "step_00000008.tmp").exists()


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    _train(tmp_path, ["trainer.max_steps=8", "trainer.checkpoint_interval=4"])
    newest = tmp_path / "checkpoints" / "step_00000008"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(ckpt.CorruptCheckpointError, match="model.safetensors"):
        ckpt.verify(newest)
    with caplog.at_level("WARNING"):
        found = ckpt.latest_valid_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoints" / "step_00000004"
    assert "step_00000008" in caplog.text and "step_00000004" in caplog.text


def test_altered_checkpoint_is_detected(tmp_path):
    _train(tmp_path, ["trainer.max_steps=4", "trainer.checkpoint_interval=4"])
    folder = tmp_path / "checkpoints" / "step_00000004"
    state = folder / ckpt.TRAINER_STATE
    state.write_text(state.read_text().replace('"step": 4', '"step": 5'))  # same size, other bytes
    with pytest.raises(ckpt.CorruptCheckpointError, match="checksum"):
        ckpt.verify(folder)
    assert ckpt.latest_valid_checkpoint(tmp_path) is None


class _Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("victim", ["random_states_0.pkl", "optimizer.bin"])
def test_a_tampered_pickle_in_a_checkpoint_is_refused_without_running_it(tmp_path, victim):
    _train(tmp_path, ["trainer.max_steps=4", "trainer.checkpoint_interval=4"])
    folder = tmp_path / "checkpoints" / "step_00000004"
    marker = tmp_path / "code-ran"
    torch.save({"state": _Payload(marker)}, folder / victim)
    ckpt.write_manifest(folder)  # whoever tampers can rewrite the manifest too: it guards against damage, not attacks
    with pytest.raises(ckpt.UnsafeCheckpointError, match=victim):
        _train(tmp_path, ["trainer.max_steps=8", "trainer.checkpoint_interval=4", "trainer.resume=auto"])
    assert not marker.exists()
    torch.load(folder / victim, weights_only=False)  # the payload is live: a plain unpickle runs it
    assert marker.read_text() == "ran"


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    common = ["trainer.max_steps=8", "trainer.checkpoint_interval=4", "trainer.log_interval=1", "eval.interval=100"]
    straight = tmp_path / "straight"
    _train(straight, common)
    run = tmp_path / "run"
    _train(run, common + ["trainer.stop_after=4"])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "tokens": 5120, "lo')  # what a SIGKILL in the middle of a write leaves
    _train(run, common + ["trainer.resume=auto"])
    assert_same_losses(run, straight, 8)


def test_failure_while_saving_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    from accelerate import Accelerator

    _train(tmp_path, ["trainer.max_steps=4", "trainer.checkpoint_interval=4"])
    good = tmp_path / "checkpoints" / "step_00000004"

    def disk_full(self, output_dir=None, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", disk_full)
    with pytest.raises(OSError, match="No space"):
        _train(tmp_path, ["trainer.max_steps=8", "trainer.checkpoint_interval=4", "trainer.resume=auto"])
    ckpt.verify(good)
    assert ckpt.latest_valid_checkpoint(tmp_path) == good


def _nan_at_steps(steps):
    """A replacement forward whose loss is NaN on chosen optimizer steps (one micro-batch per step)."""
    from polycom.model import PolyComForCausalLM

    original, calls = PolyComForCausalLM.forward, [0]

    def forward(model, *args, **kwargs):
        out = original(model, *args, **kwargs)
        if kwargs.get("labels") is not None:
            calls[0] += 1
            if calls[0] in steps:
                out.loss = out.loss * float("nan")
                out.lm_loss = out.lm_loss * float("nan")
        return out

    return forward


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    from polycom.model import PolyComForCausalLM

    monkeypatch.setattr(PolyComForCausalLM, "forward", _nan_at_steps({3, 4}))
    summary = _train(tmp_path, ["trainer.max_steps=10", "trainer.log_interval=1", "trainer.global_batch_size=4"])
    assert summary["nonfinite_steps"] == 2 and summary["steps"] == 10
    assert summary["val_loss"] == summary["val_loss"]  # finite weights: not NaN
    assert [r["nonfinite_steps"] for r in _losses(tmp_path)][:5] == [0, 0, 1, 2, 2]


def test_too_many_consecutive_nonfinite_steps_stop_and_keep_last_good_checkpoint(tmp_path, monkeypatch):
    from polycom.model import PolyComForCausalLM
    from polycom.train.trainer import NonFiniteLossError

    monkeypatch.setattr(PolyComForCausalLM, "forward", _nan_at_steps(set(range(6, 100))))
    with pytest.raises(NonFiniteLossError, match="trainer.max_consecutive_nonfinite=3"):
        _train(tmp_path, ["trainer.max_steps=20", "trainer.checkpoint_interval=4", "trainer.global_batch_size=4",
                          "trainer.max_consecutive_nonfinite=3"])
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000004"]
    ckpt.verify(tmp_path / "checkpoints" / "step_00000004")


BAD_CONFIGS = [
    (["activation.name=tanh"], "activation.name", "polynorm"),
    (["activation.order=5"], "activation.order", "1..4"),
    (["activation.order=0"], "activation.order", "1..4"),
    (["model.num_attention_heads=3"], "model.num_attention_heads", "divisible"),
    (["model.num_experts=4", "model.num_experts_per_tok=5", "model.moe_intermediate_size=32"],
     "model.num_experts_per_tok", "between 1 and"),
    (["model.num_experts=4", "model.num_experts_per_tok=2"], "model.moe_intermediate_size", "> 0"),
    (["model.max_position_embeddings=64"], "trainer.seq_len", "max_position_embeddings=64"),
    (["optim.lr=-1e-3"], "optim.lr", "> 0"),
    (["schedule.warmup_steps=100"], "warmup", "shorter than training"),
    (["schedule.name=linear"], "schedule.name", "cosine"),
    (["trainer.global_batch_size=10"], "trainer.global_batch_size", "multiple of"),
    (["trainer.max_steps=null", "trainer.max_tokens=null"], "trainer.max_steps", "budget"),
    (["trainer.mixed_precision=fp8"], "trainer.mixed_precision", "bf16"),
    (["trainer.device=tpu"], "trainer.device", "cuda"),
    (["data.source=ftp"], "data.source", "local"),
    (["data=local_jsonl", "data.train_files=[/nonexistent/*.jsonl]", "data.validation_fraction=0.1"],
     "data.train_files", "/nonexistent"),
    (["data=local_jsonl", "data.train_files=[/nonexistent/*.jsonl]"], "data.validation_files", "validation_fraction"),
    (["data=gutenberg", "paths.data_dir=null"], "POLYCOM_DATA_DIR", "data_dir"),
    (["tokenizer.vocab_size=100"], "tokenizer.vocab_size", "256 byte"),
    (["eval.val_tokens=10"], "eval.val_tokens", "trainer.seq_len"),
    (["logger.name=tensorboard"], "logger.name", "wandb"),
    (["logger.mode=sometimes"], "logger.mode", "offline"),
    (["eval.downstream=[arc_easy,typo_task]"], "eval.downstream", "arc_easy"),
    (["eval.downstream=[piqa]", "eval.data_dir=/nonexistent"], "eval.data_dir", "piqa"),
    (["eval.downstream=[piqa]", "eval.downstream_too_long=truncate"], "eval.downstream_too_long", "skip"),
]


@pytest.mark.parametrize("overrides,key,hint", BAD_CONFIGS, ids=[c[1] + ":" + c[0][-1] for c in BAD_CONFIGS])
def test_bad_config_fails_before_any_model_is_built(tmp_path, monkeypatch, overrides, key, hint):
    from polycom.model import PolyComForCausalLM
    from polycom.train.validate import ConfigError

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the config was checked")

    monkeypatch.setattr(PolyComForCausalLM, "__init__", never)
    with pytest.raises(ConfigError) as err:
        _train(tmp_path, overrides)
    assert key in str(err.value) and hint in str(err.value), str(err.value)


def test_batch_that_does_not_divide_across_processes():
    from polycom.train.validate import ConfigError, validate_config

    cfg = compose_train(TINY)  # global batch 8, micro-batch 4
    validate_config(cfg, world_size=2)
    with pytest.raises(ConfigError, match=r"trainer.global_batch_size=8 .* x 3 process"):
        validate_config(cfg, world_size=3)


@pytest.mark.slow
def test_two_processes_with_uneven_shards_stop_together_and_checkpoint(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    # two files -> one whole file per rank; rank 1's is 20x shorter, so it wraps around many more epochs
    for name, n in (("a.jsonl", 400), ("b.jsonl", 20)):
        with open(data / name, "w") as f:
            for i in range(n):
                f.write(json.dumps({"text": f"{name} document {i}: " + "words of text " * 30}) + "\n")
    run_dir = tmp_path / "run"
    cmd = [*LAUNCH, "train.py", *TINY, "data=local_jsonl", f"data.train_files=[{data}/*.jsonl]",
           "data.validation_fraction=0.05", "eval.val_tokens=1024", "trainer.max_steps=12",
           "trainer.checkpoint_interval=6",
           f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    final = run_dir / "checkpoints" / "step_00000012"
    ckpt.verify(final)
    assert (final / "random_states_0.pkl").exists() and (final / "random_states_1.pkl").exists()
    assert json.loads((final / ckpt.TRAINER_STATE).read_text())["step"] == 12

"""Graceful stop: SIGINT/SIGTERM/SIGUSR1 finish the step, checkpoint, print the resume command and exit non-zero;
every rank stops after the same step; inside a submitit job the job is requeued and continues."""

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO_ROOT
from polycom.train import checkpoint as ckpt
from polycom.train import hooks, signals
from test_distributed import LAUNCH, _env
from test_train import TINY, _losses, _train, assert_same_losses

STEPS = 40  # far more than the few steps between seeing the first metrics line and the signal's arrival
RUN = TINY + [f"trainer.max_steps={STEPS}", "trainer.log_interval=1", "eval.interval=100",
              "trainer.checkpoint_interval=100"]
TIMEOUT = 1800  # generous: a loaded machine may take seconds per step; nothing else waits on a clock


def _wait_for_metrics(path: Path, proc, lines: int = 1) -> None:
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        assert proc.poll() is None, f"the run ended before it logged a step: {proc.stderr.read()[-3000:]}"
        time.sleep(0.05)
    raise TimeoutError(path)


def _stopped_at(run_dir: Path) -> int:
    """The step of the newest (valid) checkpoint, which must also be the last logged step."""
    newest = ckpt.latest_valid_checkpoint(run_dir)
    assert newest is not None, "no checkpoint written"
    step = ckpt.read_trainer_state(newest)["step"]
    assert _losses(run_dir)[-1]["step"] == step
    assert step < STEPS, "the signal arrived only after the last step: nothing was interrupted"
    return step


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    _train(run_dir, RUN[len(TINY):])
    return run_dir


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_prints_the_resume_command_and_the_resume_matches(tmp_path, straight):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *RUN, f"hydra.run.dir={run_dir}"], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_metrics(run_dir / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    step = _stopped_at(run_dir)
    assert f"SIGTERM: stopped after step {step} with a checkpoint" in err
    assert "Traceback" not in err
    command = err.split("resume with:\n", 1)[1].splitlines()[0].strip()
    args = shlex.split(command)
    assert args[:2] == ["python", "train.py"] and "trainer.resume=auto" in args and f"hydra.run.dir={run_dir}" in args
    resumed = subprocess.run([sys.executable, *args[1:]], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_losses(run_dir, straight, STEPS)
    assert json.loads((run_dir / "summary.json").read_text())["complete"]


def test_a_signal_during_a_step_pauses_after_it_with_a_checkpoint(tmp_path, monkeypatch):
    """In process: the signal arrives in the middle of step 3; the run ends after step 3, checkpointed, and
    ``finish`` exits with 128 + the signal."""
    original = hooks.TrainMetrics.after_step

    def signal_at_step_3(self, ctx):
        if ctx.step == 3:
            signal.raise_signal(signal.SIGUSR1)
        original(self, ctx)

    monkeypatch.setattr(hooks.TrainMetrics, "after_step", signal_at_step_3)
    with signals.graceful_stop() as stop:
        summary = _train(tmp_path, ["trainer.max_steps=8", "trainer.checkpoint_interval=100"])
        assert summary["steps"] == 3 and not summary["complete"]
        assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003"]
        with pytest.raises(SystemExit) as exited:
            stop.finish(summary, tmp_path, "python train.py trainer.resume=auto")
    assert exited.value.code == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handlers restored


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler, as in a foreground process (one started in the background by a non-interactive
    shell inherits SIGINT ignored, and then Ctrl-C does nothing "as usual")."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_before_training_a_signal_acts_as_usual_and_a_second_ctrl_c_quits_at_once(python_sigint):
    with signals.graceful_stop() as stop:
        with pytest.raises(KeyboardInterrupt):  # not armed yet: nothing to save
            signal.raise_signal(signal.SIGINT)
        stop.armed = True
        signal.raise_signal(signal.SIGINT)  # recorded, the step goes on
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_submitit_handler_is_called_after_the_checkpoint_and_the_requeued_job_resumes(tmp_path, monkeypatch):
    """Inside a submitit job the handler submitit installed for its preemption signal (which re-submits the job)
    runs after our checkpoint; the requeued start of the same job then continues (trainer.resume=auto)."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    called = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: called.append(signum))
    try:
        with signals.graceful_stop() as stop:
            stop.armed = True
            signal.raise_signal(signal.SIGUSR2)
            with pytest.raises(SystemExit):
                stop.finish({"steps": 5, "complete": False}, tmp_path, "python train.py")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert called == [signal.SIGUSR2]
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"trainer": {"resume": None}})
    signals.resume_if_requeued(cfg, tmp_path)
    assert cfg.trainer.resume == "auto" and not (tmp_path / signals.REQUEUE_MARKER).exists()
    later = OmegaConf.create({"trainer": {"resume": None}})
    signals.resume_if_requeued(later, tmp_path)
    assert later.trainer.resume is None  # the marker is used once: a later start of the folder is a plain one


def test_resume_command_replaces_resume_and_run_dir_and_quotes():
    command = signals.resume_command(["activation=gelu", "trainer.resume=null", "hydra.run.dir=old",
                                      "data.train_files=[a b.jsonl]"], Path("/runs/x"))
    assert shlex.split(command) == ["python", "train.py", "activation=gelu", "data.train_files=[a b.jsonl]",
                                    "trainer.resume=auto", "hydra.run.dir=/runs/x"]


@pytest.mark.slow
def test_a_signal_reaching_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*LAUNCH, "train.py", *RUN, f"hydra.run.dir={run_dir}"], cwd=REPO_ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_metrics(run_dir / "metrics.jsonl", proc)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]
    rank1 = [p for p in workers if p.environ().get("RANK") == "1"]
    assert len(rank1) == 1, [p.cmdline() for p in workers]
    rank1[0].send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0, err[-3000:]
    step = _stopped_at(run_dir)
    ckpt.verify(run_dir / "checkpoints" / f"{ckpt.PREFIX}{step:08d}")
    assert f"SIGUSR1: stopped after step {step} with a checkpoint" in err


@pytest.mark.slow
def test_submitit_preemption_signal_requeues_the_job_which_resumes_to_the_uninterrupted_losses(tmp_path, straight):
    """hydra-submitit-launcher's local executor, for real: USR2 to the job's process (what SLURM sends ahead of the
    time limit) checkpoints the step, submitit re-submits the job, and the new start continues it."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", *RUN,
                             f"hydra.sweep.dir={sweep}"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + TIMEOUT
    while not list(sweep.glob("*/metrics.jsonl")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    run_dir = next(sweep.glob("*/metrics.jsonl")).parent
    _wait_for_metrics(run_dir / "metrics.jsonl", proc)
    task = [p for p in psutil.Process(proc.pid).children(recursive=True) if "submitit.core._submit" in p.cmdline()]
    assert len(task) == 1
    task[0].send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-3000:]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs and "SIGUSR2: stopped after step" in logs
    assert_same_losses(run_dir, straight, STEPS)
    assert json.loads((run_dir / "summary.json").read_text())["complete"]

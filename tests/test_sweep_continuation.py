"""A sweep relaunched with trainer.resume=auto continues in its folder; sweep_status, summarize and collect_runs tell
a sweep's jobs apart: done, unfinished, missing, and the same job run twice."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from polycom import sweeps
from scripts_loader import load_script
from test_train import TINY, compose_train

collect_runs = load_script("collect_runs")
summarize = load_script("summarize")
sweep_status = load_script("sweep_status")

SWEEP = ["activation=gelu,polynorm", "seed=0,1"]


def write_sweep(folder, task=SWEEP):
    folder.mkdir(parents=True)
    (folder / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    max_batch_size: null\n    params: null\n  overrides:\n    task:\n"
        + "".join(f"    - {o}\n" for o in task))
    return folder


def write_job(folder, activation, seed, summary=None, metrics=(), checkpoint=None, resume=None):
    (folder / ".hydra").mkdir(parents=True)
    overrides = [f"activation={activation}", f"seed={seed}"] + ([f"trainer.resume={resume}"] if resume else [])
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "config.yaml").write_text(f"seed: {seed}\nactivation:\n  name: {activation}\ntrainer:\n  max_steps: 4\n"
                                        f"  resume: {resume or 'null'}\n  save_hf: false\n")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps({"activation": activation, "seed": seed, "steps": 4,
                                                         "tokens": 40, "val_ppl": 9.0, "complete": True,
                                                         "run_dir": str(folder), **summary}))
    if metrics:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if checkpoint is not None:
        state = folder / "checkpoints" / f"step_{checkpoint:08d}"
        state.mkdir(parents=True)
        (state / "trainer_state.json").write_text(json.dumps({"step": checkpoint, "schedule": {"total_steps": 4}}))
    return folder


def test_the_sweep_folder_of_a_relaunch_with_resume_auto_is_the_earlier_one_of_the_same_command(tmp_path,
                                                                                               monkeypatch):
    base = tmp_path / "outputs" / "train" / "multirun"
    old = write_sweep(base / "2026-01-01_00-00-00", ["model=tiny", *SWEEP])
    other = write_sweep(base / "2026-01-02_00-00-00", ["model=tiny", "activation=gelu"])  # another sweep, newer
    again = ["seed=0,1", "model=tiny", "activation=gelu,polynorm", "trainer.resume=auto", "logger=none"]
    assert sweeps.sweep_dir(str(base), again, "auto") == str(old)  # any order; resume and logger aside
    assert sweeps.sweep_dir(str(base), again + ["optim.lr=1e-3"], "auto") not in (str(old), str(other))
    # a fresh sweep (no resume=auto) never reuses a folder, not even one of the same second
    fresh = sweeps.sweep_dir(str(base), again[:3], None)
    assert fresh != str(old) and not os.path.exists(fresh)
    os.makedirs(fresh)
    assert sweeps.sweep_dir(str(base), again[:3], None) not in (fresh, str(old))
    # what train.py's Hydra config resolves hydra.sweep.dir to (a one-job sweep: compose cannot take a sweep)
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    assert compose_train(["activation=gelu", "model=tiny", "trainer.resume=auto"], hydra=True).hydra.sweep.dir == str(
        other)
    assert compose_train(["activation=gelu", "model=tiny"], hydra=True).hydra.sweep.dir != str(other)


@pytest.fixture
def task_dir(tmp_path):
    """Two launches of one sweep, the second in a new folder (before sweeps continued theirs): job gelu/0 ran in
    both; in the second, polynorm/0 was killed at step 2, gelu/1 never logged a step and polynorm/1 never began."""
    first = write_sweep(tmp_path / "multirun" / "2026-01-01_00-00-00")
    write_job(first / "0_activation=gelu,seed=0", "gelu", 0, {"val_loss": 2.5}, checkpoint=4)
    second = write_sweep(tmp_path / "multirun" / "2026-01-02_00-00-00")
    dup = write_job(second / "0_activation=gelu,seed=0", "gelu", 0, {"val_loss": 2.5}, checkpoint=4,
                    resume="auto")
    os.utime(dup / "summary.json", (2e9, 2e9))  # the newer one
    write_job(second / "1_activation=polynorm,seed=0", "polynorm", 0,
              metrics=[{"step": 1, "tokens": 10, "loss": 5.0}, {"step": 2, "tokens": 20, "loss": 4.0, "val_loss": 4.5}],
              checkpoint=2)
    write_job(second / "2_activation=gelu,seed=1", "gelu", 1)
    (second / "2_activation=gelu,seed=1" / "config.yaml").unlink()  # killed while building
    return tmp_path


def test_sweep_status_lists_done_unfinished_missing_and_duplicate_jobs(task_dir, capsys):
    sweep_status.main([str(task_dir)])
    out = capsys.readouterr().out
    second = [line.split() for line in out.split("2026-01-02_00-00-00:")[1].splitlines()]
    rows = {tuple(r[:2]): r for r in second if r and r[0].startswith("activation=")}
    assert rows[("activation=gelu", "seed=0")][2:6] == ["done", "4/4", "40", "2.5000"]
    assert rows[("activation=polynorm", "seed=0")][2:6] == ["unfinished", "2/4", "20", "4.5000"]
    assert "last checkpoint at step 2" in " ".join(rows[("activation=polynorm", "seed=0")])
    assert rows[("activation=gelu", "seed=1")][2] == "not"  # "not started"
    assert rows[("activation=polynorm", "seed=1")][2:3] == ["missing"]
    assert "4 job(s): 1 done, 1 unfinished, 1 not started, 1 missing" in out
    duplicate = [line for line in out.splitlines() if line.startswith("duplicate:")]
    assert len(duplicate) == 1 and "ran 2 times" in duplicate[0]
    newer = duplicate[0].split("the newer")[0].rsplit("; ", 1)[-1]
    assert "2026-01-02_00-00-00/0_activation=gelu,seed=0 (complete" in newer


def test_collect_runs_refuses_a_job_run_twice_before_copying_anything(task_dir, tmp_path):
    out = tmp_path / "study"
    with pytest.raises(SystemExit, match=r"the same job \(gelu-s0\) ran 2 times.*the newer.*trainer.resume=auto"):
        collect_runs.main([str(task_dir / "multirun"), "--out-dir", str(out)])
    assert not out.exists()


def test_summarize_explains_a_job_run_twice_instead_of_suggesting_by_trainer_resume(task_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        summarize.main([str(task_dir / "multirun"), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "the same job (activation=gelu seed=0) ran 2 times" in err and "pass --by" not in err
    assert "1_activation=polynorm,seed=0: no summary.json" in err  # the skipped run is named too


@pytest.mark.slow
def test_relaunching_a_sweep_with_resume_auto_continues_it(tmp_path):
    """The same multirun command again with trainer.resume=auto: the finished job ends in seconds, untouched, the
    missing one is trained, all in the first launch's folder."""
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path)}
    command = [sys.executable, "train.py", "-m", *TINY, "trainer.max_steps=3", "eval.interval=3",
               "activation=gelu,polynorm"]

    def launch(*extra):
        result = subprocess.run(command + list(extra), cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]

    launch()
    (sweep,) = (tmp_path / "outputs" / "train" / "multirun").iterdir()
    done, killed = sorted(p for p in sweep.iterdir() if p.is_dir())
    finished = (done / "summary.json").read_text(), (done / "metrics.jsonl").read_text()
    subprocess.run(["rm", "-r", str(killed)], check=True)
    launch("trainer.resume=auto")
    assert list((tmp_path / "outputs" / "train" / "multirun").iterdir()) == [sweep]
    assert ((done / "summary.json").read_text(), (done / "metrics.jsonl").read_text()) == finished
    assert json.loads((killed / "summary.json").read_text())["steps"] == 3
    status = sweep_status.sweep_status(sweep)
    assert [job.state for job in status.jobs] == ["done", "done"]

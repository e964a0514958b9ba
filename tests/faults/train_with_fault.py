"""Run train.py exactly as a user would, with one fault injected (test-only, never imported by polycom).

    POLYCOM_TEST_FAULT=<kind>:<step>  python tests/faults/train_with_fault.py <train.py overrides>

The process SIGKILLs itself at a point fixed by the fault, not by a clock, so the tests behave the same on an
idle machine and on one where a step takes 20 s:

- ``kill_in_step:<n>``: during update n (1-based, counted over the whole run, resumes included), after every
  micro-batch's backward pass and before gradient clipping and the optimizer step.
- ``kill_after_log:<n>``: right after the ``metrics.jsonl`` line of step n is written (before that step's
  checkpoint, if it has one).
- ``kill_in_save:<n>``: while writing checkpoint n: after the model, optimizer and RNG files are on disk but
  before the manifest is written and the folder is renamed into place.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from polycom.train import checkpoint, trainer, tracking

REPO_ROOT = Path(__file__).resolve().parents[2]
kind, _, target = os.environ.get("POLYCOM_TEST_FAULT", "").partition(":")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if kind == "kill_in_save":
    name = f"{checkpoint.PREFIX}{int(target):08d}"
    write_manifest = checkpoint.write_manifest

    def dying_write_manifest(folder):
        if folder.name.startswith(name):
            die()
        write_manifest(folder)

    checkpoint.write_manifest = dying_write_manifest

elif kind == "kill_in_step":
    updates = [0]  # updates done before this one: the resumed checkpoint's step, then one per call
    load_checkpoint, train_step = checkpoint.load_checkpoint, trainer.train_step

    def counting_load_checkpoint(accelerator, folder):
        state = load_checkpoint(accelerator, folder)
        updates[0] = state["step"]
        return state

    def dying_train_step(model, optimizer, accelerator, micro_batches, grad_clip):
        updates[0] += 1
        if updates[0] == int(target):
            accelerator.clip_grad_norm_ = lambda *args, **kwargs: die()  # gradients computed, not yet applied
        return train_step(model, optimizer, accelerator, micro_batches, grad_clip)

    checkpoint.load_checkpoint = counting_load_checkpoint
    trainer.train_step = dying_train_step

elif kind == "kill_after_log":
    log = tracking.MetricsLogger.log

    def dying_log(self, record):
        log(self, record)
        if record.get("step") == int(target):
            die()

    tracking.MetricsLogger.log = dying_log

elif kind:
    raise SystemExit(f"unknown POLYCOM_TEST_FAULT kind {kind!r}")

sys.argv = [str(REPO_ROOT / "train.py"), *sys.argv[1:]]
runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")

"""Run train.py exactly as a user would, with one fault injected (test-only, never imported by polycom).

    POLYCOM_TEST_FAULT=kill_in_save:<step>  python tests/faults/train_with_fault.py <train.py overrides>

kill_in_save: the process SIGKILLs itself while writing checkpoint <step>: after the model, optimizer and
RNG files are on disk but before the manifest is written and the folder is renamed into place.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from polycom.train import checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
fault = os.environ.get("POLYCOM_TEST_FAULT", "")

if fault.startswith("kill_in_save:"):
    target = f"{checkpoint.PREFIX}{int(fault.split(':')[1]):08d}"
    write_manifest = checkpoint.write_manifest

    def dying_write_manifest(folder):
        if folder.name.startswith(target):
            os.kill(os.getpid(), signal.SIGKILL)
        write_manifest(folder)

    checkpoint.write_manifest = dying_write_manifest

sys.argv = [str(REPO_ROOT / "train.py"), *sys.argv[1:]]
runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")

"""Stop a run gracefully on a signal: finish the step, write a checkpoint, print how to resume, exit non-zero.

``graceful_stop()`` (used by ``train.py`` around ``train``) catches SIGINT (Ctrl-C), SIGTERM (``kill``, SLURM
preemption, ``scancel``), SIGUSR1 (``sbatch --signal=USR1@<s>`` ahead of a time limit) and, inside a submitit job,
submitit's preemption signal (USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise; hydra-submitit-launcher sends
it ``signal_delay_s`` before the time limit). The handler only records the signal; the ``GracefulStop`` hook
(``polycom.train.hooks``) reads it after each update, sets ``ctx.pause`` so the ``Checkpointing`` hook saves that
step, and the loop ends. Under several processes the hook all-reduces the signal at every step (a signal may reach
one rank only), so every rank stops after the same step and joins the same checkpoint.

Then ``StopRequest.finish`` prints the exact resume command and ends the process with ``128 + signal`` (130 for
SIGINT, 143 for SIGTERM). If a handler was installed for that signal before ours (submitit's
``checkpoint_and_try_requeue``), it is called instead, after the checkpoint: submitit then re-submits the job with
the same arguments (its checkpoint/requeue protocol) and exits. The requeued job starts in the same folder with the
same config, ``trainer.resume`` included; ``resume_if_requeued`` turns an unset ``trainer.resume`` into ``auto``
there, when the folder holds ``REQUEUE_MARKER`` (written by ``finish`` before handing over to submitit) or when
SLURM says the job was requeued (``SLURM_RESTART_COUNT`` > 0, e.g. after a preemption).

Before the first update (tokenizer training, data loading) nothing is worth saving: a signal acts as it would
without this module (Ctrl-C raises ``KeyboardInterrupt``). A second Ctrl-C while a stop is pending does too, for
when the current step or the checkpoint takes too long. A signal arriving after the last update (final
evaluation, export) waits for the run to end; the run is complete, so the process then exits normally.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
REQUEUE_MARKER = "requeued.txt"  # in the run folder: the next start continues from the newest checkpoint
_PASS_THROUGH = (signal.SIG_DFL, signal.SIG_IGN, None, signal.default_int_handler)


def submitit_signal() -> int | None:
    """Inside a submitit job, the signal submitit requeues the job on (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    if not (os.environ.get("SUBMITIT_FOLDER") or os.environ.get("SUBMITIT_EXECUTOR")):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


def _signals() -> tuple[int, ...]:
    """The stop signals, plus submitit's preemption signal inside a submitit job."""
    extra = submitit_signal()
    return tuple(dict.fromkeys(STOP_SIGNALS + ((extra,) if extra else ())))


class StopRequest:
    """The signal that asked this process to stop (``signum``), set by the handler or by the ranks' agreement."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False  # set by the GracefulStop hook when the training loop starts
        self.previous: dict[int, object] = {}  # handlers found when ours were installed

    # -- the handler: record only; the loop acts on it after the step -------------------------------------------
    def handle(self, signum: int, frame) -> None:
        if not self.armed or (self.signum is not None and signum == signal.SIGINT):
            self._as_if_unhandled(signum, frame)
            return
        if self.signum is None:  # no logging here: a write the signal interrupted must not be re-entered
            self.signum = signum

    def _as_if_unhandled(self, signum: int, frame) -> None:
        previous = self.previous.get(signum)
        if callable(previous):
            previous(signum, frame)  # Python's default_int_handler raises KeyboardInterrupt
            return
        if previous == signal.SIG_IGN:
            return
        raise SystemExit(128 + signum)

    def agree(self, signum: int) -> None:
        """Record the stop the processes agreed on (a rank the signal did not reach)."""
        if signum and self.signum is None:
            self.signum = signum

    # -- after train() returned ---------------------------------------------------------------------------------
    def finish(self, summary: dict, run_dir: Path, command: str) -> None:
        """After a run stopped by a signal: print the resume command and end the process (see module docstring).
        A run that completed anyway, or was not stopped by a signal, returns."""
        if self.signum is None or summary.get("complete"):
            return
        is_main = os.environ.get("RANK", "0") == "0"
        signum, name = self.signum, _name(self.signum)
        message = (f"{name}: stopped after step {summary.get('steps')} with a checkpoint in {run_dir}/checkpoints; "
                   f"resume with:\n  {command}")
        if is_main:
            log.warning(message.replace("\n ", ""))
            print(message, file=sys.stderr, flush=True)
        previous = self.previous.get(signum)
        if previous not in _PASS_THROUGH and callable(previous):  # a handler installed before ours: submitit's
            if signum == submitit_signal():  # the job is about to be re-submitted: it continues where it stopped
                (Path(run_dir) / REQUEUE_MARKER).write_text(f"{name} at step {summary.get('steps')}\n")
            previous(signum, None)  # submitit: re-submits the job and exits (sys.exit(-1)); rank > 0 returns
        raise SystemExit(128 + signum)


_CURRENT = StopRequest()  # what the GracefulStop hook reads; replaced by each graceful_stop()


def current() -> StopRequest:
    return _CURRENT


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Install the stop handlers for the duration of the block (the previous ones come back after it)."""
    global _CURRENT
    request, installed = StopRequest(), []
    if threading.current_thread() is threading.main_thread():  # signal.signal works in the main thread only
        for sig in _signals():
            request.previous[sig] = signal.signal(sig, request.handle)
            installed.append(sig)
    else:
        log.warning("not in the main thread: no graceful stop on signals")
    outer, _CURRENT = _CURRENT, request
    try:
        yield request
    finally:
        _CURRENT = outer
        for sig in installed:
            signal.signal(sig, request.previous[sig])


def requeued(run_dir: Path) -> bool:
    """Whether this start continues a job a scheduler requeued (see module docstring)."""
    return (Path(run_dir) / REQUEUE_MARKER).is_file() or int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def resume_if_requeued(cfg, run_dir: Path) -> None:
    """Set ``trainer.resume=auto`` in a requeued job's config when it was left unset."""
    if cfg.trainer.resume is None and requeued(run_dir):
        log.info("%s: a requeued job; continuing from its newest checkpoint (trainer.resume=auto)", run_dir)
        cfg.trainer.resume = "auto"
    with contextlib.suppress(FileNotFoundError):
        (Path(run_dir) / REQUEUE_MARKER).unlink()


def resume_command(task_overrides: Sequence[str], run_dir: Path, entry: str = "train.py") -> str:
    """``python train.py <the run's overrides> trainer.resume=auto hydra.run.dir=<run_dir>``, shell-quoted; under
    several processes, the same launcher must start it again (noted after the command)."""
    kept = [o for o in task_overrides if not o.lstrip("+~").startswith(("trainer.resume=", "hydra.run.dir="))]
    command = shlex.join(["python", entry, *kept, "trainer.resume=auto", f"hydra.run.dir={run_dir}"])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        command += "   # started by the same launcher as before (accelerate launch ... / torchrun ... / srun ...)"
    return command


def _name(signum: int) -> str:
    return signal.Signals(signum).name

"""The end of a run: final evaluation, ``summary.json``, the Hugging Face export; each redone by a resume until it
succeeded.

A run can be trained to its last step and still lack what follows: the final validation or downstream evaluation,
the summary, or the export (a full disk: ENOSPC while writing ``hf/``). ``trainer.resume=auto`` then loads the
last checkpoint and redoes what ``polycom.runs.pending_final_steps`` names, without training:

- no final summary (none, no validation loss, a downstream task failed or never ran): the final validation and
  downstream evaluation on the loaded weights, then the summary and the export;
- a final summary but no complete export: the export alone.

``finished_summary`` tells, before anything is built, that nothing is left (a finished sweep job is skipped in
seconds). The summary is written before the export, so a failed export loses no result; an export left by an
earlier, shorter session of the run (extended since) is removed first, so it can never pass for this one's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from polycom.runs import HF_DIR, METRICS, SUMMARY, pending_final_steps, read_summary, summary_problem
from polycom.train import checkpoint as ckpt
from polycom.train.export import export_hf
from polycom.train.hooks import StepContext
from polycom.train.schedule import Schedule

log = logging.getLogger(__name__)


def finished_summary(cfg, run_dir: Path, checkpoint: Path | None) -> dict | None:
    """The summary of a run resumed at its planned last step with nothing left to do, else None."""
    if checkpoint is None:
        return None
    steps = Schedule.for_run(cfg).total_steps
    if ckpt.read_trainer_state(checkpoint)["step"] != steps:
        return None
    if pending_final_steps(run_dir, steps, cfg.trainer.save_hf, cfg.eval.downstream):
        return None
    log.info("%s: already trained to step %d and finished, nothing to do; summary in %s", run_dir, steps,
             run_dir / SUMMARY)
    return read_summary(run_dir)


def finish_run(cfg, run_dir: Path, accelerator, model, tokenizer, logger, *, steps: int, start_step: int,
               summarize: Callable[[], dict], final_hooks: list, metrics_log, downstream) -> dict:
    """Summary and export at the end of a session (every process calls it). ``summarize`` builds the summary
    from the hooks' state; ``final_hooks`` (validation, downstream evaluation) are rerun when the session resumed
    at the last step without a final summary."""
    is_main = accelerator.is_main_process
    previous = read_summary(run_dir) if start_step == steps else None
    if start_step == steps and summary_problem(previous, steps, cfg.eval.downstream) is None:
        summary = previous  # only the export is left
    else:
        if start_step == steps:
            log.info("%s: resumed at its last step (%d) without a final summary: final evaluation again", run_dir,
                     steps)
            _final_evaluation(final_hooks, steps, metrics_log, run_dir)
        summary = summarize()
    if is_main:
        stale = Path(run_dir) / HF_DIR
        if start_step < steps and stale.exists():  # the export of an earlier, shorter session
            shutil.rmtree(stale)
        _atomic_json(Path(run_dir) / SUMMARY, summary)
        logger.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    if cfg.trainer.save_hf and summary["complete"]:
        try:
            export_hf(accelerator, model, tokenizer, run_dir, summary)
        except Exception as err:
            logger.close(1)
            raise RuntimeError(
                f"the Hugging Face export to {Path(run_dir) / HF_DIR} failed ({type(err).__name__}: {err}); "
                f"training is complete and the summary and last checkpoint are in {run_dir}: fix the cause (e.g. free "
                "disk space) and run the same command with trainer.resume=auto to export without training") from err
    if is_main:
        logger.close(0)
        if summary.get("val_loss") is not None:
            log.info("%s: validation loss %.4f (perplexity %.2f) after %s tokens; summary in %s", run_dir,
                     summary["val_loss"], summary["val_ppl"], f"{summary['tokens']:,}", Path(run_dir) / SUMMARY)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if downstream.error:
        raise RuntimeError(f"downstream evaluation failed ({downstream.error}); the run's checkpoint, model and "
                           f"summary are in {run_dir}: evaluate it with scripts/evaluate.py run_dir={run_dir}, or run "
                           "the same command with trainer.resume=auto to evaluate again")
    return summary


def _final_evaluation(final_hooks: list, steps: int, metrics_log, run_dir: Path) -> None:
    """The hooks of the last step that evaluate (validation, downstream), as if that step had just been trained.
    Nothing is logged again (``metrics.jsonl`` already has the step); the summary takes the step's logged record
    (its training loss) updated with the new results."""
    ctx = StepContext(step=steps, last=True, lr=0.0, result=None)
    for hook in final_hooks:
        hook.after_step(ctx)
    metrics_log.last_record = {**_logged_record(run_dir, steps), **ctx.record}


def _logged_record(run_dir: Path, step: int) -> dict:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return {}
    record = {}
    for line in path.read_text().splitlines():
        try:
            values = json.loads(line)
        except ValueError:
            continue
        if values.get("step") == step:
            record.update(values)
    return record


def _atomic_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)

"""What runs around the optimizer steps, one object per concern, each on its own schedule.

The loop in ``trainer.train`` makes an update, then calls every hook's ``after_step`` in order with a
``StepContext``: hooks add to ``ctx.record`` (logged by ``MetricsLog`` when not empty), or set ``ctx.pause``.
Order: non-finite guard, training metrics, data statistics, time estimate, validation, downstream evaluation,
metrics sinks, stop rules (``trainer.stop_after``, a stop signal), checkpointing (so a checkpoint follows the
metrics of its step, and a pause is checkpointed).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from polycom.model.stats import activation_values, expert_load_metrics
from polycom.train.metrics import mfu
from polycom.train.step import StepResult, validation_loss

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainState:
    """What a checkpoint's ``trainer_state.json`` records of the run (besides its schedule); the data position is
    ``step`` x the blocks of one step."""

    step: int = 0  # updates made
    tokens: int = 0
    nonfinite_steps: int = 0
    wall_seconds: float = 0.0  # over every session of the run
    schedule_changed_at_step: int | None = None  # set when the run was continued with another lr schedule

    @classmethod
    def from_checkpoint(cls, values: dict) -> "TrainState":
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepContext:
    step: int  # updates made, this one included
    last: bool  # the last update of the run
    lr: float
    result: StepResult
    record: dict = field(default_factory=dict)  # metrics of this step
    pause: bool = False  # end this session after this step (checkpointed)


def due(interval: int | None, step: int) -> bool:
    return bool(interval) and step % interval == 0


class Hook:
    def after_step(self, ctx: StepContext) -> None:
        raise NotImplementedError


class NonFiniteGuard(Hook):
    """Counts updates skipped for a non-finite loss or gradient; too many in a row stop the run."""

    def __init__(self, state: TrainState, max_consecutive: int):
        self.state, self.max_consecutive, self.consecutive = state, max_consecutive, 0

    def after_step(self, ctx):
        if ctx.result.finite:
            self.consecutive = 0
            return
        self.state.nonfinite_steps += 1
        self.consecutive += 1
        log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s); update skipped", ctx.step - 1,
                    ctx.result.lm_loss.item(), ctx.result.grad_norm.item())
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps with a non-finite loss or gradient (step {ctx.step - 1}); "
                f"stopping (trainer.max_consecutive_nonfinite={self.max_consecutive}). The last good checkpoint "
                "is kept.")


class TrainMetrics(Hook):
    """Every ``interval`` steps (and the last): loss, lr, gradient norm, throughput, MFU and the model's own values
    (PolyCom coefficients, MoE losses and expert load)."""

    def __init__(self, interval: int, state: TrainState, accelerator, model, tokens_per_step: int,
                 flops_per_token: float, peak: float | None, progress):
        self.interval, self.state, self.accelerator, self.model = interval, state, accelerator, model
        self.tokens_per_step, self.flops_per_token, self.peak, self.progress = (tokens_per_step, flops_per_token,
                                                                                peak, progress)
        self.window_start, self.window_tokens = time.time(), 0

    def after_step(self, ctx):
        self.window_tokens += self.tokens_per_step
        self.progress.update(1)
        if not (due(self.interval, ctx.step) or ctx.last):
            return
        reduce = self.accelerator.reduce
        tokens_per_s = self.window_tokens / max(time.time() - self.window_start, 1e-9)
        loss = reduce(ctx.result.lm_loss, reduction="mean").item()
        ctx.record.update({"step": ctx.step, "tokens": self.state.tokens, "loss": loss, "lr": ctx.lr,
                           "grad_norm": ctx.result.grad_norm.item(), "tokens_per_s": tokens_per_s,
                           "nonfinite_steps": self.state.nonfinite_steps})
        if self.peak:
            ctx.record["mfu"] = mfu(tokens_per_s, self.flops_per_token, self.peak * self.accelerator.num_processes)
        ctx.record.update(activation_values(self.accelerator.unwrap_model(self.model, keep_torch_compile=False)))
        aux = ctx.result.aux
        if aux:
            ctx.record["load_balance_loss"] = reduce(aux["load_balance_loss"], "mean").item()
            ctx.record["router_z_loss"] = reduce(aux["router_z_loss"], "mean").item()
            ctx.record.update(expert_load_metrics(aux["expert_load"]))
        self.progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        self.window_start, self.window_tokens = time.time(), 0


class Validation(Hook):
    """Loss on the fixed held-out blocks every ``interval`` steps and at the end."""

    def __init__(self, interval: int | None, state: TrainState, model, blocks, batch_size: int, accelerator):
        self.interval, self.state, self.model, self.blocks = interval, state, model, blocks
        self.batch_size, self.accelerator = batch_size, accelerator
        self.val_loss: float | None = None
        self.started = time.time()  # the elapsed time printed: this session's

    def after_step(self, ctx):
        if due(self.interval, ctx.step) or ctx.last:
            self.val_loss = validation_loss(self.model, self.blocks, self.batch_size, self.accelerator)
            ctx.record.update({"step": ctx.step, "tokens": self.state.tokens, "val_loss": self.val_loss,
                               "val_ppl": perplexity(self.val_loss)})
            if self.accelerator.is_main_process:
                console("step %d: validation loss %.4f (perplexity %.2f) after %s tokens, %s", ctx.step,
                        self.val_loss, perplexity(self.val_loss), f"{self.state.tokens:,}",
                        duration(time.time() - self.started))


class DownstreamEval(Hook):
    """Downstream tasks every ``interval`` steps and at the end. A failure is logged and remembered (``error``):
    training, checkpoint and summary go on, and the run fails at the end."""

    def __init__(self, interval: int | None, state: TrainState, evaluate):
        self.interval, self.state, self.evaluate = interval, state, evaluate
        self.error: str | None = None

    def after_step(self, ctx):
        if not (due(self.interval, ctx.step) or ctx.last):
            return
        ctx.record.update({"step": ctx.step, "tokens": self.state.tokens})
        try:
            ctx.record.update(self.evaluate())
        except Exception as err:
            log.exception("step %d: downstream evaluation failed", ctx.step)
            self.error = f"step {ctx.step}: {type(err).__name__}: {err}"


class MetricsLog(Hook):
    """Writes the step's record to the metrics sinks; keeps the last one (the summary is built from it)."""

    def __init__(self, logger, accelerator):
        self.logger, self.accelerator = logger, accelerator
        self.last_record: dict = {}

    def after_step(self, ctx):
        if ctx.record:
            ctx.record.setdefault("loss", self.accelerator.reduce(ctx.result.lm_loss, reduction="mean").item())
            self.logger.log(ctx.record)
            self.last_record = ctx.record


class StopAfter(Hook):
    """``trainer.stop_after``: end this session after N steps (time-limited jobs); resume later."""

    def __init__(self, stop_after: int | None, start_step: int):
        self.stop_after, self.start_step = stop_after, start_step

    def after_step(self, ctx):
        if self.stop_after is not None and ctx.step - self.start_step >= self.stop_after and not ctx.last:
            ctx.pause = True
            log.info("trainer.stop_after=%d: pausing at step %d; continue with trainer.resume=auto", self.stop_after,
                     ctx.step)


class GracefulStop(Hook):
    """A stop signal (SIGINT, SIGTERM, SIGUSR1; ``polycom.train.signals``) ends the session after the current update:
    ``ctx.pause``, so ``Checkpointing`` saves it. With several processes the signal number is all-reduced (max) at
    every update, one scalar next to the step's own all-reduces: a signal that reached one rank only stops every
    rank after the same update, and they write one checkpoint together."""

    def __init__(self, accelerator, request=None):
        from polycom.train import signals

        self.accelerator = accelerator
        self.request = request if request is not None else signals.current()
        self.request.armed = True  # from now on a signal waits for the end of the step

    def after_step(self, ctx):
        signum = self.request.signum or 0
        if self.accelerator.num_processes > 1:
            signum = int(self.accelerator.gather(torch.tensor([signum], device=self.accelerator.device)).max())
        if not signum or ctx.last:
            return
        self.request.agree(signum)
        ctx.pause = True
        if self.accelerator.is_main_process:
            import signal

            console("%s: stopping after step %d with a checkpoint%s", signal.Signals(signum).name, ctx.step,
                    " (Ctrl-C again to quit at once, unsaved)" if signum == signal.SIGINT else "",
                    level=logging.WARNING)


class DataStats(Hook):
    """How often the training data has been read and what the stream skipped, with the training metrics:
    ``data/epoch`` (the pass over the training data being read, from 0; the highest over processes),
    ``data/skipped_malformed`` (rows skipped with ``data.bad_rows=skip``) and ``data/skipped_empty`` (empty
    documents), summed over processes and counted over every pass (a bad row read in 3 passes counts 3 times).
    ``summary`` holds the same for ``summary.json``, with ``epochs``: the passes trained, once the data ran out
    (None before). When the data runs out before the budget is spent, a warning says how often it will be repeated.
    """

    def __init__(self, interval: int, stream, accelerator, total_steps: int, tokens_per_step: int):
        self.interval, self.stream, self.accelerator = interval, stream, accelerator
        self.total_steps, self.tokens_per_step = total_steps, tokens_per_step
        self.warned = False
        self.summary: dict = {}

    def after_step(self, ctx):
        pass_tokens = self.stream.first_epoch_tokens
        if pass_tokens is not None and not self.warned:
            self.warned = True
            budget = self.total_steps * self.tokens_per_step / self.accelerator.num_processes
            console("the training data ran out by step %d of %d: one pass holds %s tokens%s, so the budget of "
                    "%s tokens reads it ~%.1f times (data/epoch in metrics.jsonl counts the passes)", ctx.step,
                    self.total_steps, f"{pass_tokens:,}",
                    " on this process" if self.accelerator.num_processes > 1 else "", f"{int(budget):,}",
                    budget / pass_tokens, level=logging.WARNING)
        if not (due(self.interval, ctx.step) or ctx.last):
            return
        stats = self.stream.stats
        local = torch.tensor([self.stream.epoch, stats.skipped_malformed, stats.skipped_empty,
                              -1 if pass_tokens is None else pass_tokens], device=self.accelerator.device)
        every = self.accelerator.gather(local).reshape(-1, 4)
        epoch, malformed, empty = int(every[:, 0].max()), int(every[:, 1].sum()), int(every[:, 2].sum())
        ctx.record.update({"data/epoch": epoch, "data/skipped_malformed": malformed, "data/skipped_empty": empty})
        known = bool((every[:, 3] >= 0).all())
        self.summary = {"epochs": ctx.step * self.tokens_per_step / int(every[:, 3].sum()) if known else None,
                        "epoch_tokens": int(every[:, 3].sum()) if known else None,
                        "skipped_malformed": malformed, "skipped_empty": empty}


class TimeEstimate(Hook):
    """Once, early in each session: the time training still takes at the speed measured over its first updates
    (the first update, slow with warm-up and compilation, is not measured). Validation and checkpoints come on top."""

    def __init__(self, start_step: int, total_steps: int, tokens_per_step: int, accelerator, after: int = 10):
        remaining = total_steps - start_step
        self.first = start_step + 1
        self.report_at = start_step + min(after, remaining // 2) if remaining >= 8 else None
        self.total_steps, self.tokens_per_step, self.accelerator = total_steps, tokens_per_step, accelerator
        self.t0 = 0.0

    def after_step(self, ctx):
        if ctx.step == self.first:
            self.t0 = time.time()
        elif ctx.step == self.report_at and self.accelerator.is_main_process:
            per_step = (time.time() - self.t0) / (ctx.step - self.first)
            console("step %d of %d: ~%s of training to go at %s tokens/s (measured over steps %d-%d; validation "
                    "and checkpoints add to it)", ctx.step, self.total_steps,
                    duration(per_step * (self.total_steps - ctx.step)), f"{self.tokens_per_step / per_step:,.0f}",
                    self.first + 1, ctx.step)


class Checkpointing(Hook):
    """Every ``interval`` steps, at the end, on a pause, and at wsd's ``decay_start`` (kept: a run extended later
    branches off there)."""

    def __init__(self, interval: int | None, decay_start: int | None, save):
        self.interval, self.decay_start, self.save = interval, decay_start, save

    def after_step(self, ctx):
        pre_decay = ctx.step == self.decay_start
        if due(self.interval, ctx.step) or ctx.last or ctx.pause or pre_decay:
            self.save(keep=pre_decay)


def perplexity(loss: float | None) -> float | None:
    return math.exp(min(loss, 50.0)) if loss is not None else None


def duration(seconds: float) -> str:
    """``42 s``, ``13 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def console(message: str, *args, level: int = logging.INFO) -> None:
    """Log a line without tearing the progress bar (cleared while the line is written, then redrawn)."""
    with tqdm.external_write_mode():
        log.log(level, message, *args)

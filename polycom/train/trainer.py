"""The training loop, on Accelerate: one process on a laptop CPU, DDP/FSDP under ``accelerate launch``.

``train(cfg, run_dir)`` validates the config, builds tokenizer, model, optimizer and data, optionally resumes,
then repeats one update followed by the hooks of ``polycom.train.hooks`` (metrics, validation, downstream
evaluation, logging, checkpoints, stop rule) until the token/step budget is spent, and ends with ``summary.json``
and the model in Hugging Face format under ``<run_dir>/hf``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from polycom.data import batched, build_tokenizer, train_blocks, validation_blocks
from polycom.model.activations import get_activation
from polycom.model.stats import count_parameters, flops_per_token
from polycom.runs import RunSummary, is_result_metric
from polycom.train import checkpoint as ckpt
from polycom.train import hooks
from polycom.train.build import build_model
from polycom.train.export import code_version
from polycom.train.finish import finish_run, finished_summary
from polycom.train.hooks import NonFiniteLossError, StepContext, TrainState, perplexity
from polycom.train.metrics import device_peak_flops
from polycom.train.optim import build_optimizer
from polycom.train.parallel import build_accelerator
from polycom.train.resume import resolve_resume, schedule_change
from polycom.train.schedule import Schedule
from polycom.train.step import train_step
from polycom.train.tracking import MetricsLogger, default_run_name, run_group
from polycom.train.validate import ConfigError, validate_config

log = logging.getLogger(__name__)


def _resume_state(accelerator, folder: Path, schedule: Schedule) -> TrainState:
    saved = ckpt.load_checkpoint(accelerator, folder)
    state = TrainState.from_checkpoint(saved)
    log.info("resumed from %s at step %d", folder, state.step)
    changed_at = schedule_change(saved, schedule)
    if changed_at is not None:
        log.warning("the learning-rate schedule changed (e.g. trainer.max_steps): update %d of the %d already trained "
                    "had lr %.3g, this run's schedule gives it %.3g; the continuation will differ from a run planned "
                    "this way from the start (README: Resuming)", changed_at, state.step,
                    Schedule.from_dict(saved["schedule"]).lr(changed_at), schedule.lr(changed_at))
        earlier = state.schedule_changed_at_step
        state.schedule_changed_at_step = changed_at if earlier is None else min(earlier, changed_at)
    return state


def data_stream_key(cfg) -> str:
    """What a streaming data position depends on (the seed, ``data.*`` but prefetching, the tokenizer, the block
    length), hashed: a saved position is used only by a run with the same key."""
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "prefetch_blocks"}
    values = {"seed": cfg.seed, "seq_len": cfg.trainer.seq_len, "data": data,
              "tokenizer": OmegaConf.to_container(cfg.tokenizer, resolve=True)}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _saved_data_position(folder: Path | None, accelerator, key: str) -> dict | None:
    """This rank's streaming data position in the checkpoint being resumed (``BlockStream.state_dict``); None where
    there is none (no resume, data=tokens, an older checkpoint, another number of processes) or it belongs to another
    data stream (``data_stream_key``: e.g. a seed changed under ``trainer.resume_allow_changes``)."""
    if folder is None:
        return None
    saved = ckpt.read_trainer_state(folder)
    positions = saved.get("data_positions")
    if not positions or not any(positions):
        return None
    if saved.get("data_stream_key") != key:
        log.info("the checkpoint's data positions are of another data stream (seed, data or tokenizer changed): "
                 "the stream is fast-forwarded to the step instead")
        return None
    if len(positions) != accelerator.num_processes:
        if accelerator.is_main_process:
            log.warning("the checkpoint was written by %d processes and this run has %d: streaming data is split by "
                        "process, so each process fast-forwards through its new part of the data, which differs from "
                        "what the uninterrupted run would have read (data=tokens does not depend on the number of "
                        "processes)", len(positions), accelerator.num_processes)
        return None
    return positions[accelerator.process_index]


def train(cfg, run_dir: Path, wandb_group: str | None = None) -> dict:
    started = time.time()
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    validate_config(cfg, launched_world)
    accelerator = build_accelerator(cfg.trainer, cfg.parallel)
    world, is_main = accelerator.num_processes, accelerator.is_main_process
    if world != launched_world:  # e.g. `accelerate launch --cpu` silently starting independent processes
        raise RuntimeError(f"the launcher started {launched_world} processes but Accelerate sees {world}; on CPU "
                           "launch with --multi_gpu and ACCELERATE_USE_CPU=true (README, several processes)")
    plan = resolve_resume(cfg, Path(run_dir))  # a resume that changes what is trained stops here
    run_dir, resume_from = plan.run_dir, plan.checkpoint
    finished = finished_summary(cfg, run_dir, resume_from)
    if finished is not None:
        accelerator.end_training()
        return finished
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)

    tc = cfg.trainer
    with accelerator.main_process_first():
        tokenizer = build_tokenizer(cfg.tokenizer, cfg.data)
    # the held-out blocks first: a data problem should surface before the model is built
    val_blocks = validation_blocks(cfg.data, tokenizer, tc.seq_len, num_blocks=max(1, cfg.eval.val_tokens // tc.seq_len))
    model = build_model(cfg, tokenizer)
    model_config, counts = model.config, count_parameters(model)
    model_flops = flops_per_token(model, tc.seq_len)
    optimizer = build_optimizer(model, cfg.optim)
    if tc.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)

    accum = tc.global_batch_size // (tc.micro_batch_size * world)
    tokens_per_step = tc.global_batch_size * tc.seq_len
    schedule = Schedule.for_run(cfg)
    steps = schedule.total_steps
    state = _resume_state(accelerator, resume_from, schedule) if resume_from is not None else TrainState()
    start_step, wall_before = state.step, state.wall_seconds  # wall time of earlier (interrupted) sessions
    stream = train_blocks(cfg.data, tokenizer, tc.seq_len, seed=cfg.seed, rank=accelerator.process_index,
                          world_size=world, start_block=start_step * accum * tc.micro_batch_size,
                          position=_saved_data_position(resume_from, accelerator, data_stream_key(cfg)))
    batches = batched(stream, tc.micro_batch_size)

    has_order = get_activation(cfg.activation.name).polycom
    name = cfg.logger.run_name or default_run_name(cfg)
    # lines past the starting step are from an interrupted session (or one that never checkpointed): dropped
    logger = MetricsLogger(run_dir, cfg.logger, name, cfg.logger.group or wandb_group or run_group(cfg),
                           {**OmegaConf.to_container(cfg, resolve=True), "run_dir": str(run_dir),
                            **counts.as_summary()}, enabled=is_main, resume_step=start_step)
    if is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        log.info("model: %s, %s parameters (%s active); %d steps of %d tokens; run dir %s", cfg.activation.name,
                 f"{counts.total:,}", f"{counts.active:,}", steps, tokens_per_step, run_dir)

    def save(keep: bool) -> None:
        state.wall_seconds = wall_before + time.time() - started
        trainer_state = {**state.to_dict(), "schedule": schedule.to_dict(), "keep": keep, **plan.record,
                         "data_positions": gather_object([stream.state_dict()]),  # every rank's, in rank order
                         "data_stream_key": data_stream_key(cfg)}
        ckpt.save_checkpoint(accelerator, run_dir, state.step, trainer_state, tc.keep_checkpoints)

    def evaluate_downstream() -> dict:
        from polycom.eval import evaluate_tasks, flatten_metrics

        results = evaluate_tasks(accelerator.unwrap_model(model), tokenizer, list(cfg.eval.downstream),
                                 limit=cfg.eval.downstream_limit, data_dir=cfg.eval.data_dir,
                                 batch_size=cfg.eval.downstream_batch_size, accelerator=accelerator,
                                 too_long=cfg.eval.downstream_too_long)
        return flatten_metrics(results)  # per-group results too: BLiMP phenomena, MMLU subjects

    progress = tqdm(total=steps, initial=start_step, disable=not (is_main and tc.progress_bar), desc=name,
                    dynamic_ncols=True)
    validation = hooks.Validation(cfg.eval.interval, state, model, val_blocks, cfg.eval.batch_size, accelerator)
    downstream = hooks.DownstreamEval(cfg.eval.downstream_interval, state, evaluate_downstream)
    metrics_log = hooks.MetricsLog(logger, accelerator)
    data_stats = hooks.DataStats(tc.log_interval, stream, accelerator, steps, tokens_per_step)
    step_hooks = [
        hooks.NonFiniteGuard(state, tc.max_consecutive_nonfinite),
        hooks.TrainMetrics(tc.log_interval, state, accelerator, model, tokens_per_step, model_flops,
                           device_peak_flops(accelerator.device), progress),
        data_stats,
        hooks.TimeEstimate(start_step, steps, tokens_per_step, accelerator),
        validation,
        *([downstream] if cfg.eval.downstream else []),
        metrics_log,
        hooks.StopAfter(tc.stop_after, start_step),
        hooks.GracefulStop(accelerator),  # SIGINT/SIGTERM/SIGUSR1 (polycom.train.signals): pause, checkpointed
        hooks.Checkpointing(tc.checkpoint_interval, schedule.decay_start, save),
    ]
    model.train()
    try:
        for step in range(start_step, steps):
            lr = schedule.lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            result = train_step(model, optimizer, accelerator, [next(batches) for _ in range(accum)], tc.grad_clip)
            state.step, state.tokens = step + 1, state.tokens + tokens_per_step
            ctx = StepContext(step=state.step, last=state.step == steps, lr=lr, result=result)
            for hook in step_hooks:
                hook.after_step(ctx)
            if ctx.pause:
                break
    except BaseException:
        progress.close()
        logger.close(1)
        raise
    progress.close()

    def summarize() -> dict:
        return RunSummary(
            activation=cfg.activation.name, activation_order=cfg.activation.order if has_order else None,
            seed=cfg.seed, model=OmegaConf.to_container(cfg.model, resolve=True),
            ffn_hidden_size=(model_config.moe_intermediate_size if model_config.is_moe
                             else model_config.intermediate_size),
            vocab_size=model_config.vocab_size, **counts.as_summary(), tokens=state.tokens, steps=state.step,
            val_loss=validation.val_loss, val_ppl=perplexity(validation.val_loss),
            val_tokens=int(val_blocks.numel()),
            final_train_loss=metrics_log.last_record.get("loss"), nonfinite_steps=state.nonfinite_steps,
            schedule_changed_at_step=state.schedule_changed_at_step, complete=state.step == steps,
            wall_seconds=wall_before + time.time() - started, world_size=world, run_dir=str(run_dir),
            code_version=code_version(), downstream_error=downstream.error, planned_steps=steps,
            config_changes=plan.config_changes, data=data_stats.summary,
            metrics={k: v for k, v in metrics_log.last_record.items() if is_result_metric(k)},
        ).to_dict()

    return finish_run(cfg, run_dir, accelerator, model, tokenizer, logger, steps=steps, start_step=start_step,
                      summarize=summarize, final_hooks=[validation, *([downstream] if cfg.eval.downstream else [])],
                      metrics_log=metrics_log, downstream=downstream)


__all__ = ["train", "ConfigError", "NonFiniteLossError"]

"""The training loop, on Accelerate: one process on a laptop CPU, DDP/FSDP under ``accelerate launch``.

``train(cfg, run_dir)`` validates the config, builds tokenizer, model, optimizer and data, optionally
resumes, trains for the token/step budget with periodic validation, downstream evaluation, logging and
checkpoints, and ends with ``summary.json`` and the model in Hugging Face format under ``<run_dir>/hf``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from polycom.model.activations import _PolyCom
from polycom.data import batched, build_tokenizer, padded_vocab_size, train_blocks, validation_blocks
from polycom.model import PolyComConfig, PolyComForCausalLM
from polycom.train import checkpoint as ckpt
from polycom.train.metrics import device_peak_flops, mfu, model_flops_per_token
from polycom.train.optim import build_optimizer
from polycom.train.resume import resolve_resume, schedule_change
from polycom.train.schedule import Schedule
from polycom.train.tracking import MetricsLogger
from polycom.train.validate import ConfigError, validate_config

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


def build_accelerator(trainer_cfg) -> Accelerator:
    cpu = trainer_cfg.device == "cpu" or (trainer_cfg.device == "auto" and not torch.cuda.is_available())
    return Accelerator(cpu=cpu, mixed_precision=trainer_cfg.mixed_precision)


def build_model_config(cfg, tokenizer) -> PolyComConfig:
    eos = tokenizer.eos_token_id
    return PolyComConfig.matched(
        **OmegaConf.to_container(cfg.model, resolve=True),
        activation=cfg.activation.name,
        activation_order=cfg.activation.order,
        polycom_eps=cfg.activation.eps,
        vocab_size=padded_vocab_size(tokenizer),
        eos_token_id=eos,
        bos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
    )


def parameter_counts(model: PolyComForCausalLM) -> dict:
    """Total, active (per token, for MoE), embedding, and the parameters that are matmuls (for FLOPs)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    active = total
    if model.config.is_moe:
        from polycom.model.moe import count_active_parameters

        active = count_active_parameters(model)
    # The input embedding is a lookup, not a matmul, unless it is tied to the output head.
    matmul = active - (0 if model.config.tie_word_embeddings else embedding)
    return {"num_params": total, "num_params_active": active, "num_params_embedding": embedding,
            "num_params_matmul": matmul}


def polycom_coefficients(model) -> dict:
    values = {}
    for name, module in model.named_modules():
        if isinstance(module, _PolyCom):
            tag = name.replace("model.layers.", "layer").replace(".mlp.act", "").replace(".", "/")
            for i, a in enumerate(module.weight.detach().float().tolist()):
                values[f"polycom/{tag}/a{i}"] = a
            values[f"polycom/{tag}/b"] = module.bias.detach().float().item()
    return values


def expert_load_metrics(expert_load: torch.Tensor) -> dict:
    """Per MoE layer: min / max fraction of routed tokens per expert and the entropy of the load."""
    values = {}
    for layer, load in enumerate(expert_load.float()):
        entropy = -(load.clamp_min(1e-12) * load.clamp_min(1e-12).log()).sum()
        values[f"moe/layer{layer}/load_min"] = load.min().item()
        values[f"moe/layer{layer}/load_max"] = load.max().item()
        values[f"moe/layer{layer}/load_entropy"] = entropy.item()
    return values


@torch.no_grad()
def validation_loss(model, blocks: torch.Tensor, batch_size: int, accelerator: Accelerator) -> float:
    """Mean next-token loss over the fixed validation blocks, split across processes.

    Every process runs the same number of forwards (padding with zero-weight batches) so collective
    wrappers such as FSDP stay in step.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = blocks[rank::world]
    n_batches = math.ceil(math.ceil(len(blocks) / world) / batch_size)
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    was_training = model.training
    model.eval()
    for i in range(n_batches):
        batch = mine[i * batch_size : (i + 1) * batch_size]
        weight = 1.0 if len(batch) else 0.0
        if not len(batch):
            batch = blocks[:1]
        batch = batch.to(accelerator.device)
        with accelerator.autocast():
            logits = model(input_ids=batch).logits
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum")
        totals[0] += weight * nll.double()
        totals[1] += weight * batch[:, 1:].numel()
    model.train(was_training)
    totals = accelerator.reduce(totals, reduction="sum")
    return (totals[0] / totals[1]).item()


@dataclass
class StepResult:
    lm_loss: torch.Tensor  # this process's mean LM loss over its micro-batches
    grad_norm: torch.Tensor  # global gradient norm before clipping
    finite: bool  # False: the update was skipped
    aux: dict = field(default_factory=dict)  # MoE losses and expert load


def train_step(model, optimizer, accelerator: Accelerator, micro_batches: list[torch.Tensor],
               grad_clip: float | None) -> StepResult:
    """One optimizer step over this process's micro-batches (gradient accumulation).

    Gradients are synchronised across processes only on the last micro-batch. Each micro-batch's loss is
    divided by their number, so with equal-sized micro-batches the update equals one step on the mean
    loss of the whole global batch. A non-finite loss or gradient norm skips the update; every process
    sees the same (all-reduced) norm and so takes the same decision.
    """
    accum = len(micro_batches)
    lm_loss = torch.zeros((), device=accelerator.device)
    aux: dict = {}
    for i, batch in enumerate(micro_batches):
        batch = batch.to(accelerator.device)
        sync = contextlib.nullcontext() if i == accum - 1 else accelerator.no_sync(model)
        with sync, accelerator.autocast():
            out = model(input_ids=batch, labels=batch)
            accelerator.backward(out.loss / accum)
        lm_loss += out.lm_loss.detach() / accum
        if out.load_balance_loss is not None:
            for key in ("load_balance_loss", "router_z_loss"):
                aux[key] = aux.get(key, 0.0) + getattr(out, key).detach() / accum
            aux["expert_load"] = out.expert_load
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    finite = bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(lm_loss))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(lm_loss, grad_norm, finite, aux)


def _atomic_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def train(cfg, run_dir: Path, wandb_group: str | None = None) -> dict:
    started = time.time()
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    validate_config(cfg, launched_world)
    accelerator = build_accelerator(cfg.trainer)
    world, is_main = accelerator.num_processes, accelerator.is_main_process
    if world != launched_world:  # e.g. `accelerate launch --cpu` silently starting independent processes
        raise RuntimeError(f"the launcher started {launched_world} processes but Accelerate sees {world}; on CPU "
                           "launch with --multi_gpu and ACCELERATE_USE_CPU=true (README, several processes)")
    run_dir, resume_from = resolve_resume(cfg, Path(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)

    with accelerator.main_process_first():
        tokenizer = build_tokenizer(cfg.tokenizer, cfg.data)
    # the held-out blocks first: a data problem should surface before the model is built
    val_blocks = validation_blocks(cfg.data, tokenizer, cfg.trainer.seq_len,
                                   num_blocks=max(1, cfg.eval.val_tokens // cfg.trainer.seq_len))
    model_config = build_model_config(cfg, tokenizer)
    model = PolyComForCausalLM(model_config)
    counts = parameter_counts(model)
    optimizer = build_optimizer(model, cfg.optim)
    if cfg.trainer.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)

    tc = cfg.trainer
    accum = tc.global_batch_size // (tc.micro_batch_size * world)
    tokens_per_step = tc.global_batch_size * tc.seq_len
    schedule = Schedule.for_run(cfg)
    steps = schedule.total_steps

    state = {"step": 0, "tokens": 0, "nonfinite_steps": 0, "wall_seconds": 0.0}
    if resume_from is not None:
        loaded = ckpt.load_checkpoint(accelerator, resume_from)
        changed_at = schedule_change(loaded, schedule)
        loaded.pop("schedule", None), loaded.pop("keep", None)
        state.update(loaded)
        log.info("resumed from %s at step %d", resume_from, state["step"])
        if changed_at is not None:
            log.warning("the learning-rate schedule changed (e.g. trainer.max_steps): update %d of the %d already "
                        "trained had lr %.3g, this run's schedule gives it %.3g; the continuation will differ from "
                        "a run planned this way from the start (README: Resuming)", changed_at, state["step"],
                        Schedule.from_dict(ckpt.read_trainer_state(resume_from)["schedule"]).lr(changed_at),
                        schedule.lr(changed_at))
            state["schedule_changed_at_step"] = min(changed_at, state.get("schedule_changed_at_step", changed_at))
    start_step = state["step"]
    if start_step > steps:
        raise ConfigError(f"{resume_from} is at step {start_step}, past the {steps} steps this config trains "
                          "(trainer.max_steps / trainer.max_tokens): raise the budget or resume an earlier checkpoint")
    finished = run_dir / "summary.json"
    if start_step == steps and finished.exists() and json.loads(finished.read_text()).get("complete"):
        log.info("%s: already trained to step %d, nothing to do; summary in %s", run_dir, steps, finished)
        accelerator.end_training()
        return json.loads(finished.read_text())
    wall_before = state["wall_seconds"]  # time spent in earlier (interrupted) sessions of this run
    blocks_per_step_per_rank = accum * tc.micro_batch_size
    stream = train_blocks(cfg.data, tokenizer, tc.seq_len, seed=cfg.seed, rank=accelerator.process_index,
                          world_size=world, start_block=start_step * blocks_per_step_per_rank)
    batches = batched(stream, tc.micro_batch_size)

    flops_per_token = model_flops_per_token(counts["num_params_matmul"], model_config.num_hidden_layers,
                                            model_config.hidden_size, tc.seq_len)
    peak = device_peak_flops(accelerator.device)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_name = cfg.logger.run_name or f"{cfg.activation.name}-s{cfg.seed}"
    # lines past the starting step are from an interrupted session (or one that never checkpointed): dropped
    logger = MetricsLogger(run_dir, cfg.logger, run_name, cfg.logger.group or wandb_group or cfg.task_name,
                           {**resolved, "run_dir": str(run_dir), **counts}, enabled=is_main, resume_step=start_step)
    if is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        log.info("model: %s, %s parameters (%s active); %d steps of %d tokens; run dir %s",
                 cfg.activation.name, f"{counts['num_params']:,}", f"{counts['num_params_active']:,}", steps,
                 tokens_per_step, run_dir)

    def save(keep: bool) -> None:
        state["wall_seconds"] = wall_before + time.time() - started
        trainer_state = {**state, "schedule": schedule.to_dict(), "keep": keep}
        ckpt.save_checkpoint(accelerator, run_dir, state["step"], trainer_state, tc.keep_checkpoints)

    def evaluate_downstream() -> dict:
        from polycom.eval import evaluate_tasks, flatten_metrics

        results = evaluate_tasks(accelerator.unwrap_model(model), tokenizer, list(cfg.eval.downstream),
                                 limit=cfg.eval.downstream_limit, data_dir=cfg.eval.data_dir,
                                 batch_size=cfg.eval.downstream_batch_size, accelerator=accelerator,
                                 too_long=cfg.eval.downstream_too_long)
        return flatten_metrics(results)

    progress = tqdm(total=steps, initial=start_step, disable=not (is_main and tc.progress_bar), desc=run_name,
                    dynamic_ncols=True)
    model.train()
    consecutive_nonfinite = 0
    window_start, window_tokens = time.time(), 0
    val_loss = None
    downstream_error = None
    exit_code = 1
    try:
        for step in range(start_step, steps):
            lr = schedule.lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro_batches = [next(batches) for _ in range(accum)]
            result = train_step(model, optimizer, accelerator, micro_batches, tc.grad_clip)
            lm_loss, grad_norm, aux = result.lm_loss, result.grad_norm, result.aux
            if result.finite:
                consecutive_nonfinite = 0
            else:
                state["nonfinite_steps"] += 1
                consecutive_nonfinite += 1
                log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s); update skipped",
                            step, lm_loss.item(), grad_norm.item())
            state["step"] = step + 1
            state["tokens"] += tokens_per_step
            window_tokens += tokens_per_step
            progress.update(1)
            if consecutive_nonfinite >= tc.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    f"{consecutive_nonfinite} consecutive steps with a non-finite loss or gradient (step {step}); "
                    f"stopping (trainer.max_consecutive_nonfinite={tc.max_consecutive_nonfinite}). "
                    "The last good checkpoint is kept.")

            last = state["step"] == steps
            record = {}
            if state["step"] % tc.log_interval == 0 or last:
                elapsed = time.time() - window_start
                tokens_per_s = window_tokens / max(elapsed, 1e-9)
                loss_value = accelerator.reduce(lm_loss, reduction="mean").item()
                record = {"step": state["step"], "tokens": state["tokens"], "loss": loss_value, "lr": lr,
                          "grad_norm": grad_norm.item(), "tokens_per_s": tokens_per_s,
                          "nonfinite_steps": state["nonfinite_steps"]}
                if peak:
                    record["mfu"] = mfu(tokens_per_s, flops_per_token, peak * world)
                record.update(polycom_coefficients(accelerator.unwrap_model(model)))
                if aux:
                    record["load_balance_loss"] = accelerator.reduce(aux["load_balance_loss"], "mean").item()
                    record["router_z_loss"] = accelerator.reduce(aux["router_z_loss"], "mean").item()
                    record.update(expert_load_metrics(aux["expert_load"]))
                progress.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_s:,.0f}")
                window_start, window_tokens = time.time(), 0
            if (cfg.eval.interval and state["step"] % cfg.eval.interval == 0) or last:
                val_loss = validation_loss(model, val_blocks, cfg.eval.batch_size, accelerator)
                record.update({"step": state["step"], "tokens": state["tokens"], "val_loss": val_loss,
                               "val_ppl": math.exp(min(val_loss, 50.0))})
            ds_interval = cfg.eval.downstream_interval
            if cfg.eval.downstream and ((ds_interval and state["step"] % ds_interval == 0) or last):
                record.update({"step": state["step"], "tokens": state["tokens"]})
                try:
                    record.update(evaluate_downstream())
                except Exception as err:  # keep training, checkpoint and summary; fail loudly at the end
                    log.exception("step %d: downstream evaluation failed", state["step"])
                    downstream_error = f"step {state['step']}: {type(err).__name__}: {err}"
            if record:
                record.setdefault("loss", accelerator.reduce(lm_loss, reduction="mean").item())
                logger.log(record)
            pause = tc.stop_after is not None and state["step"] - start_step >= tc.stop_after and not last
            pre_decay = state["step"] == schedule.decay_start  # wsd: kept, a run extended later branches off here
            if (tc.checkpoint_interval and state["step"] % tc.checkpoint_interval == 0) or last or pause or pre_decay:
                save(keep=pre_decay)
            if pause:
                log.info("trainer.stop_after=%d: pausing at step %d; continue with trainer.resume=auto",
                         tc.stop_after, state["step"])
                break
        exit_code = 0
    finally:
        progress.close()
        if exit_code:
            logger.close(exit_code)

    final_record = {}
    if os.path.exists(run_dir / "metrics.jsonl"):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        final_record = json.loads(lines[-1]) if lines else {}
    summary = {
        "activation": cfg.activation.name,
        "activation_order": cfg.activation.order,
        "seed": cfg.seed,
        "model": {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()},
        "ffn_hidden_size": model_config.moe_intermediate_size if model_config.is_moe else model_config.intermediate_size,
        "vocab_size": model_config.vocab_size,
        **counts,
        "tokens": state["tokens"],
        "steps": state["step"],
        "val_loss": val_loss,
        "val_ppl": math.exp(min(val_loss, 50.0)) if val_loss is not None else None,
        "val_tokens": int(val_blocks.numel()),
        "final_train_loss": final_record.get("loss"),
        "nonfinite_steps": state["nonfinite_steps"],
        "schedule_changed_at_step": state.get("schedule_changed_at_step"),
        "complete": state["step"] == steps,
        "wall_seconds": wall_before + time.time() - started,
        "world_size": world,
        "run_dir": str(run_dir),
        "code_version": code_version(),
    }
    if downstream_error:
        summary["downstream_error"] = downstream_error
    summary.update({k: v for k, v in final_record.items() if "/" in k and not k.startswith(("polycom/", "moe/"))})
    export_hf(accelerator, model, tokenizer, run_dir, enabled=tc.save_hf and summary["complete"])
    if is_main:
        _atomic_json(run_dir / "summary.json", summary)
        logger.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        logger.close(0)
    if is_main and val_loss is not None:
        log.info("%s: validation loss %.4f (perplexity %.2f) after %s tokens; summary in %s", run_name, val_loss,
                 summary["val_ppl"], f"{state['tokens']:,}", run_dir / "summary.json")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if downstream_error:
        raise RuntimeError(f"downstream evaluation failed ({downstream_error}); the run's checkpoint, model and "
                           f"summary are in {run_dir}: evaluate it with scripts/evaluate.py run_dir={run_dir}")
    return summary


def code_version() -> str | None:
    """The git commit of the code that ran (``+dirty`` with uncommitted changes), for reproducibility."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def export_hf(accelerator: Accelerator, model, tokenizer, run_dir: Path, enabled: bool) -> None:
    """The final model and tokenizer in Hugging Face format under ``<run_dir>/hf``."""
    if not enabled:
        return
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        out = run_dir / "hf"
        unwrapped.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(out)
    accelerator.wait_for_everyone()


__all__ = ["train", "ConfigError", "NonFiniteLossError", "build_model_config", "parameter_counts"]

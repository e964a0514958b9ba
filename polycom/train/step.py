"""One optimizer step and one validation pass: the mechanics the training loop repeats."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator

from polycom.model.modeling import causal_lm_loss


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``batch`` on ``device``. To a CUDA device the copy is asynchronous: the host tensor is first copied into
    pinned (page-locked) memory -- a host-side copy, from PyTorch's caching pinned allocator, which keeps the
    buffer until the transfer is done -- then sent with ``non_blocking=True``, so the host does not wait for
    the GPU to drain its queue before every micro-batch. Elsewhere (CPU) it is a plain ``.to(device)``."""
    device = torch.device(device)
    if device.type != "cuda" or batch.device.type != "cpu":
        return batch.to(device)
    if not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


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
        batch = to_device(batch, accelerator.device)
        with accelerator.autocast():
            logits = model(input_ids=batch).logits
        nll = causal_lm_loss(logits, batch, reduction="sum")
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
    sees the same (all-reduced) norm and so takes the same decision. That decision is the step's only wait
    for the device (one ``bool`` of a device tensor): the forward and backward passes (dense, or MoE on the
    grouped_mm path) and the batch copies queue work without synchronising the host.
    """
    accum = len(micro_batches)
    lm_loss = torch.zeros((), device=accelerator.device)
    aux: dict = {}
    for i, batch in enumerate(micro_batches):
        batch = to_device(batch, accelerator.device)
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
    finite = bool(torch.isfinite(grad_norm).logical_and(torch.isfinite(lm_loss)))  # one host sync per step
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(lm_loss, grad_norm, finite, aux)

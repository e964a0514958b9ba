"""Batched log-likelihood of continuations given contexts, computed the way lm-evaluation-harness does.

Tokenization matches lm-eval's ``HFLM`` so that both pick the same answers: trailing whitespace of the
context moves to the continuation, context + continuation is encoded whole and the continuation's tokens
are the tail past the context's own encoding; an empty context becomes the BOS (else EOS) token. Inputs
longer than the model's window lose tokens on the left, never from the continuation.

Requests are sorted longest first and batched with right padding. No attention mask is needed: in a
causal model a position never attends to later ones, so padding after a sequence cannot change its
logits. Only the positions that predict continuation tokens go through the output head when the model
accepts ``logits_to_keep`` (transformers' convention), which keeps memory flat for large vocabularies.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from polycom.eval.tasks import Request

DEFAULT_WINDOW = 2048  # lm-eval's fallback when neither the config nor the tokenizer knows the context length
_WINDOW_ATTRIBUTES = ("n_positions", "max_position_embeddings", "n_ctx")


def score_requests(model, tokenizer, requests: Sequence[Request], batch_size: int = 16,
                   max_length: int | None = None, accelerator=None,
                   encoded: Sequence[tuple[list[int], list[int]]] | None = None) -> list[tuple[float, bool]]:
    """``(sum of log P(continuation tokens), whether every continuation token is the argmax)`` per request,
    in the order given. ``encoded``: the requests already encoded (``encode_requests``), to skip tokenizing.

    With an ``accelerator`` of several processes, rank r scores requests r, r + world, ... and the shares
    are gathered, so every rank returns the full list. Every rank runs the same number of forward passes (a rank
    with fewer requests pads with throwaway batches), as a sharded model (FSDP) gathers its weights in each
    forward, a collective all ranks must join."""
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    window = max_length or model_window(model, tokenizer)
    if encoded is not None and len(encoded) != len(requests):
        raise ValueError(f"{len(encoded)} encoded requests for {len(requests)} requests")
    share = list(encoded[rank::world]) if encoded is not None else encode_requests(tokenizer, requests[rank::world])
    if world == 1:
        return _score_encoded(model, share, batch_size, window)
    batches = math.ceil(len(range(0, len(requests), world)) / batch_size)  # rank 0's share is the largest
    filler = share[:1] or (list(encoded[:1]) if encoded is not None else encode_requests(tokenizer, requests[:1]))
    local = _score_encoded(model, share, batch_size, window, batches=batches, filler=filler)
    from accelerate.utils import gather_object

    gathered = gather_object(local)  # rank 0's share, then rank 1's, ...
    results: list = [None] * len(requests)
    offset = 0
    for r in range(world):
        count = len(range(r, len(requests), world))
        results[r::world] = gathered[offset:offset + count]
        offset += count
    return results


def model_window(model, tokenizer=None) -> int:
    """The model's context length: its config (as lm-eval reads it), else the tokenizer's, else 2048."""
    for attribute in _WINDOW_ATTRIBUTES:
        value = getattr(model.config, attribute, None)
        if value:
            return int(value)
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if tokenizer_max and tokenizer_max < 1e12:  # transformers' "unset" is a huge sentinel
        return int(tokenizer_max)
    return DEFAULT_WINDOW


def encode_requests(tokenizer, requests: Sequence[Request],
                    context_cache: dict | None = None) -> list[tuple[list[int], list[int]]]:
    """``(context tokens, continuation tokens)`` per request; shared contexts are encoded once."""
    context_cache = {} if context_cache is None else context_cache
    return [encode_request(tokenizer, r, context_cache) for r in requests]


def encode_request(tokenizer, request: Request, context_cache: dict | None = None) -> tuple[list[int], list[int]]:
    context, continuation = request.context, request.continuation
    if not context.strip():  # nothing to condition on: the continuation follows the BOS/EOS token
        tokens = tokenizer.encode(context + continuation, add_special_tokens=False)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise ValueError("a request with an empty context needs a tokenizer with a BOS or EOS token")
        context_tokens, tokens = ([prefix], tokens) if tokens[:1] != [prefix] else (tokens[:1], tokens[1:])
    else:
        stripped = context.rstrip()
        context, continuation = stripped, context[len(stripped):] + continuation
        cache = {} if context_cache is None else context_cache
        if context not in cache:
            cache[context] = tokenizer.encode(context)
        context_tokens = cache[context]
        tokens = tokenizer.encode(context + continuation)[len(context_tokens):]
    if not tokens:
        raise ValueError(f"continuation {request.continuation!r} encodes to no tokens")
    return context_tokens, tokens


@torch.inference_mode()
def _score_encoded(model, encoded: list[tuple[list[int], list[int]]], batch_size: int, window: int,
                   batches: int = 0, filler: list[tuple[list[int], list[int]]] = ()) -> list[tuple[float, bool]]:
    """Scores of ``encoded``; then forwards of ``filler`` (results dropped) until ``batches`` forwards ran."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
        results: list = [None] * len(encoded)
        starts = range(0, len(order), batch_size)
        for start in starts:
            batch = order[start:start + batch_size]
            scored = _score_batch(model, [encoded[i] for i in batch], window, device, keeps_logits)
            for i, result in zip(batch, scored):
                results[i] = result
        for _ in range(batches - len(starts)):
            _score_batch(model, list(filler), window, device, keeps_logits)
        return results
    finally:
        model.train(was_training)


def _score_batch(model, batch, window: int, device, keeps_logits: bool) -> list[tuple[float, bool]]:
    inputs, spans = [], []  # spans: (first position predicting the continuation, continuation tokens)
    for context_tokens, tokens in batch:
        if len(tokens) > window:
            raise ValueError(f"a continuation of {len(tokens)} tokens does not fit the model's window of {window} "
                             "(lm-eval refuses these too; evaluate this task with a longer-context model)")
        sequence = (context_tokens + tokens)[-(window + 1):][:-1]  # the last token is only ever a target
        inputs.append(sequence)
        spans.append((len(sequence) - len(tokens), tokens))
    padded_length = max(len(s) for s in inputs)
    input_ids = torch.zeros(len(inputs), padded_length, dtype=torch.long)
    for row, sequence in enumerate(inputs):
        input_ids[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    keep = padded_length - min(first for first, _ in spans)  # covers every row's continuation positions
    kwargs = {"logits_to_keep": keep} if keeps_logits else {}
    logits = model(input_ids.to(device), **kwargs).logits[:, -keep:]
    # whole-batch tensor ops: many tiny per-row ops crawl when the cores are shared (OpenMP spin-waits)
    targets = torch.zeros(len(inputs), keep, dtype=torch.long)
    mask = torch.zeros(len(inputs), keep, dtype=torch.bool)
    for row, (first, tokens) in enumerate(spans):
        begin = first - (padded_length - keep)
        targets[row, begin:begin + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, begin:begin + len(tokens)] = True
    targets, mask = targets.to(logits.device), mask.to(logits.device)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    token_log_probs = log_probs.gather(-1, targets[..., None]).squeeze(-1)
    totals = torch.where(mask, token_log_probs, 0.0).sum(-1)
    greedy = ((log_probs.argmax(-1) == targets) | ~mask).all(-1)
    return list(zip(totals.tolist(), greedy.tolist()))

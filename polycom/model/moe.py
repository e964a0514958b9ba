"""Dropless top-k mixture-of-experts FFN (OLMoE recipe), with any activation of the registry.

One MoE layer replaces a block's dense FFN:

1. **Route.** ``logits = router(x)`` (a bias-free ``d -> E`` linear), ``probs = softmax(logits)`` in fp32, keep
   the top-k experts of every token. Their weights are the top-k probabilities as they are (OLMoE-1B-7B,
   ``norm_topk_prob=False``) or renormalized to sum to 1 (``norm_topk_prob=True``, Mixtral / Qwen-MoE style).
2. **Dispatch (dropless).** The N·k token-slots are sorted by expert (argsort of the flat expert ids; a
   ``scatter_add`` counts them per expert, once per layer: the counts feed the dispatch, the load-balance loss
   and the logged load), so each expert's tokens form one contiguous slice. No capacity factor: every slot is
   computed, whatever the imbalance.
3. **Experts.** Each expert is a bias-free FFN ``down_e · act(up_e · x)`` (gated: ``down_e · (silu(gate_e x) *
   up_e x)`` with the gate and up matrices fused as ``[gate | up]`` like ``FeedForward``), run only on its own
   slice: ``torch.nn.functional.grouped_mm`` (one call for all experts) where it applies, else a Python loop
   over the non-empty experts with one matmul pair each (see ``MoEFeedForward._use_grouped_mm``). Under
   autocast the expert input is cast to the autocast dtype (bf16) first, so a CUDA bf16 run takes
   ``grouped_mm``. The weights are 3-D parameters, ``up_proj (E, d, h or 2h)`` and ``down_proj (E, h, d)``, with h =
   ``config.moe_intermediate_size`` (``PolyComConfig.matched`` gives non-gated activations 1.5x the gated width,
   so every activation has the same parameter count).
4. **Combine.** Each slot's output is scaled by its routing weight and the k slots of a token are summed
   (``index_add_`` back to the token's row).

The activation is applied to the (tokens of the expert, h) block, so PolyNorm's RMS normalization is taken over
each token's own expert hidden vector, as in the paper's MoE. By default one activation module (one set of
PolyCom coefficients) is shared by all experts of a layer, as in the official code; with
``moe_shared_coefficients=False`` every expert has its own (``act`` becomes an ``nn.ModuleList``). Activations
without parameters are always shared: per-expert copies would be identical.

Auxiliary losses, per layer (``PolyComForCausalLM`` averages them over layers and weights them with
``router_aux_loss_coef`` / ``router_z_loss_coef``):

- load balance (Switch Transformer): ``E · sum_i f_i · P_i`` with ``f_i`` the fraction of the N·k token-slots
  routed to expert i and ``P_i`` the mean router probability of expert i. Perfectly uniform routing gives 1.0
  for any k. This is MegaBlocks' normalization (OLMoE's training code: ``E / (layers · tokens · k) · dot(counts,
  mean probs)`` summed over layers, i.e. averaged per layer). Hugging Face's OLMoE/Mixtral
  ``load_balancing_loss_func`` gives k times this at uniform routing (it sums f over the k slots separately)
  and pools all layers' tokens before computing f and P.
- router z-loss (ST-MoE): mean over tokens of ``logsumexp(logits)^2``.

Host synchronisation: on the ``grouped_mm`` path with shared coefficients a layer never waits for the device
(the counts stay a device tensor; their cumulative sum is ``grouped_mm``'s offsets), so a CUDA step queues the
whole forward and backward without a sync. The Python loop (fp32 on CUDA without autocast, unaligned widths,
fp64) and per-expert coefficients (``moe_shared_coefficients=False``) need the slice sizes on the host: one
``counts.tolist()`` per layer and micro-batch.

``torch.compile``: torch 2.13's fake-tensor (meta) rule for ``grouped_mm`` copies the CUDA kernel's checks
and accepts only bf16, although the CPU kernel runs fp32 (and fp16). While Dynamo traces, non-bf16 inputs go
through ``polycom::grouped_mm``, a custom op that runs the same kernel eagerly, with its own shape rule and a
backward of two more ``grouped_mm`` calls, so an fp32 MoE compiles on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .activations import get_activation
from .config import PolyComConfig
from .layers import build_activation

EXPERT_BACKENDS = ("auto", "loop", "grouped_mm")


@dataclass
class MoEOutput:
    hidden_states: torch.Tensor  # (B, T, d)
    load_balance_loss: torch.Tensor  # scalar, 1.0 for perfectly uniform routing
    router_z_loss: torch.Tensor  # scalar
    expert_load: torch.Tensor  # (E,), fraction of the routed token-slots per expert, sums to 1, detached


@dataclass
class Routing:
    """Routing decisions for N tokens: fp32 ``logits`` and ``probs`` (N, E); per token the ``k`` chosen
    ``experts`` (N, k, long, highest probability first) and their ``weights`` (N, k, fp32)."""

    logits: torch.Tensor
    probs: torch.Tensor
    weights: torch.Tensor
    experts: torch.Tensor


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def route(logits: torch.Tensor, k: int, norm_topk_prob: bool) -> Routing:
    """Softmax (in fp32, or fp64 for fp64 logits) over the experts of ``logits`` (N, E), then the top-k of
    every token."""
    logits = _at_least_fp32(logits)
    probs = logits.softmax(dim=-1)
    weights, experts = torch.topk(probs, k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routing(logits=logits, probs=probs, weights=weights, experts=experts)


def tokens_per_expert(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Number of token-slots routed to each expert, (E,) long, from the chosen experts (N, k).

    A ``scatter_add`` into E zeros, not ``bincount``: on CUDA ``bincount`` reads the largest id on the host
    (a sync) to size its output; this output's size is known."""
    flat = experts.reshape(-1)
    return torch.zeros(num_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


def expert_load(experts: torch.Tensor, num_experts: int, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of the N·k token-slots routed to each expert (E,), fp32; sums to 1. ``counts``: the layer's
    ``tokens_per_expert``, when already computed."""
    counts = tokens_per_expert(experts, num_experts) if counts is None else counts
    return counts.float() / max(experts.numel(), 1)


def load_balance_loss(probs: torch.Tensor, experts: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-style ``E * sum_i f_i * P_i``: f_i the fraction of token-slots routed to expert i (no gradient),
    P_i the mean router probability of expert i over tokens. Minimal (1.0) when both are uniform. ``counts``:
    the layer's ``tokens_per_expert``, when already computed."""
    num_experts = probs.shape[-1]
    f = expert_load(experts, num_experts, counts)
    probs = _at_least_fp32(probs)
    return num_experts * (f.to(probs.dtype) * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``logsumexp(logits)^2`` (ST-MoE), in fp32."""
    return torch.logsumexp(_at_least_fp32(logits), dim=-1).square().mean()


def sort_by_expert(experts: torch.Tensor) -> torch.Tensor:
    """Order of the flat token-slots (N·k) that groups them by expert (stable: token order kept within an
    expert). Slot ``s`` belongs to token ``s // k``."""
    return torch.argsort(experts.reshape(-1), stable=True)


class MoEFeedForward(nn.Module):
    """Dropless top-k MoE FFN; ``forward(x (B, T, d)) -> MoEOutput``. See the module docstring."""

    def __init__(self, config: PolyComConfig):
        super().__init__()
        spec = get_activation(config.activation)
        self.gated = spec.gated
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob  # OLMoE-1B-7B: False (the top-k weights sum to < 1)
        self.router_jitter = config.router_jitter
        self.hidden_size = d = config.hidden_size
        self.expert_hidden_size = h = config.moe_intermediate_size
        self.router = nn.Linear(d, self.num_experts, bias=False)
        self.up_proj = nn.Parameter(torch.empty(self.num_experts, d, (2 if self.gated else 1) * h))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, h, d))
        # Only activations with parameters (PolyCom) get per-expert copies.
        self.per_expert_act = spec.polycom and not config.moe_shared_coefficients
        if self.per_expert_act:
            self.act = nn.ModuleList(build_activation(config) for _ in range(self.num_experts))
        else:
            self.act = build_activation(config)
        self.expert_backend = "auto"  # "auto" | "loop" | "grouped_mm" (see _use_grouped_mm); not saved
        self.init_weights_(std=config.initializer_range, residual_std=config.initializer_range)

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, top_k={self.top_k}, d={self.hidden_size}, "
                f"h={self.expert_hidden_size}, gated={self.gated}, norm_topk_prob={self.norm_topk_prob}")

    @torch.no_grad()
    def init_weights_(self, std: float, residual_std: float) -> None:
        """Normal(0, std) for the up (and gate) matrices, Normal(0, residual_std) for the down matrices (they
        write into the residual stream). The router is an ``nn.Linear`` and the PolyCom coefficients are their
        own modules: the model's ``_init_weights`` handles both. Weights already loaded by ``from_pretrained``
        are left alone."""
        init.normal_(self.up_proj, mean=0.0, std=std)
        init.normal_(self.down_proj, mean=0.0, std=residual_std)

    # ---- routing -------------------------------------------------------------------------------------------
    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, E). With ``router_jitter`` > 0, in training, the router (only) sees the input times
        uniform noise in [1 - jitter, 1 + jitter] (Switch Transformer)."""
        if self.training and self.router_jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.router_jitter, 1.0 + self.router_jitter)
        return self.router(x)

    def forward(self, x: torch.Tensor) -> MoEOutput:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = route(self.router_logits(flat), self.top_k, self.norm_topk_prob)
        counts = tokens_per_expert(routing.experts, self.num_experts)  # once: dispatch, balance loss, load
        out = self.experts_forward(flat, routing.weights, routing.experts, counts)
        return MoEOutput(
            hidden_states=out.view(shape),
            load_balance_loss=load_balance_loss(routing.probs, routing.experts, counts),
            router_z_loss=router_z_loss(routing.logits),
            expert_load=expert_load(routing.experts, self.num_experts, counts).detach(),
        )

    # ---- experts -------------------------------------------------------------------------------------------
    def experts_forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor,
                        counts: torch.Tensor | None = None) -> torch.Tensor:
        """``out[t] = sum_j weights[t, j] * FFN_{experts[t, j]}(x[t])`` for x (N, d), weights and experts (N, k);
        ``counts``: ``tokens_per_expert(experts)`` when the caller has it.

        Dropless: all N·k slots are computed, each expert only on its own tokens. Under autocast the experts run
        in the autocast dtype (the input is cast before it is gathered, as autocast would cast it for a matmul)."""
        num_tokens, k = experts.shape
        counts = tokens_per_expert(experts, self.num_experts) if counts is None else counts
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            x = x.to(torch.get_autocast_dtype(device_type))
        order = sort_by_expert(experts)
        token_of_slot = order // k
        x_sorted = x.index_select(0, token_of_slot)  # (N·k, d), grouped by expert; faster than x[...]
        if self._use_grouped_mm(x_sorted):
            y = self._experts_grouped_mm(x_sorted, counts)
        else:
            y = self._experts_loop(x_sorted, counts.tolist())  # one host sync for the slice bounds
        y = y * weights.reshape(-1)[order].unsqueeze(-1).to(y.dtype)
        return y.new_zeros(num_tokens, y.shape[-1]).index_add_(0, token_of_slot, y)

    def _activate(self, h: torch.Tensor, expert: int | None) -> torch.Tensor:
        """Activation of a block of hidden rows; ``expert`` picks the per-expert coefficients (None: shared)."""
        act = self.act[expert] if self.per_expert_act else self.act
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return act(gate) * up
        return act(h)

    def _experts_loop(self, x_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
        # unbind / split once: indexing per expert (self.up_proj[e], x_sorted[a:b]) would make backward build
        # and add one full-size zero-padded gradient per expert
        ups, downs = self.up_proj.unbind(0), self.down_proj.unbind(0)
        outputs = []
        for e, chunk in enumerate(x_sorted.split(counts)):
            if chunk.shape[0] == 0:
                continue
            h = torch.mm(chunk, ups[e])
            outputs.append(torch.mm(self._activate(h, e), downs[e]))
        if not outputs:  # no tokens at all
            return x_sorted.new_zeros(0, self.hidden_size)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def _experts_grouped_mm(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        offsets = counts.cumsum(0).to(torch.int32)  # stays on the device: no host sync
        h = _contiguous_grad(_grouped_mm(x_sorted, self.up_proj.to(x_sorted.dtype), offsets))
        if self.per_expert_act:  # row-wise activations with different coefficients: one slice per expert
            a = torch.cat([self._activate(chunk, e) for e, chunk in enumerate(h.split(counts.tolist()))
                           if chunk.shape[0] > 0])  # one host sync for the slice bounds
        else:  # the activation is row-wise (PolyNorm: per row over h), so one call covers every expert
            a = self._activate(h, None)
        return _contiguous_grad(_grouped_mm(a.contiguous(), self.down_proj.to(a.dtype), offsets))

    def _use_grouped_mm(self, x_sorted: torch.Tensor) -> bool:
        """Which expert backend runs. ``grouped_mm`` needs fp32/bf16/fp16 and row strides that are multiples of
        16 bytes (fp64, used by the gradient tests, always takes the loop).

        "auto": ``grouped_mm`` on CPU (torch 2.13 runs it as a C++ loop of matmuls: as fast as the Python loop on
        an idle core, and far fewer ops, which matters when other processes share the cores) and for bf16 on
        CUDA (one grouped kernel); the Python loop otherwise (fp32 on CUDA, unaligned widths, older torch)."""
        if self.expert_backend not in EXPERT_BACKENDS:
            raise ValueError(f"expert_backend must be one of {EXPERT_BACKENDS}, got {self.expert_backend!r}")
        if self.expert_backend == "loop" or not hasattr(F, "grouped_mm"):
            return False
        supported = x_sorted.dtype in (torch.float32, torch.bfloat16, torch.float16) and all(
            n * x_sorted.element_size() % 16 == 0
            for n in (self.hidden_size, self.expert_hidden_size, self.up_proj.shape[-1]))
        if self.expert_backend == "grouped_mm":
            if not supported:
                raise ValueError("grouped_mm needs fp32/bf16/fp16 and expert dimensions that are multiples of 16 bytes")
            return True
        if x_sorted.is_cuda:
            return supported and x_sorted.dtype == torch.bfloat16
        return supported and x_sorted.device.type == "cpu"


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's backward rejects
    gradients with zero strides (e.g. from ``out.sum().backward()``)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _contiguous_grad(x: torch.Tensor) -> torch.Tensor:
    return _ContiguousGrad.apply(x) if x.requires_grad else x


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``grouped_mm(x (M, K), w (E, K, N), offs=offsets) -> (M, N)``: rows ``offsets[e-1]:offsets[e]`` of x times
    ``w[e]``. While Dynamo traces, inputs other than bf16 go through the custom op ``polycom::grouped_mm``:
    the fake-tensor rule of ``aten._grouped_mm`` (torch 2.13) rejects every dtype but bf16, the CPU kernel
    does not."""
    if torch.compiler.is_compiling() and x.dtype != torch.bfloat16:
        return _grouped_mm_op(x, w, offsets, "forward")
    return F.grouped_mm(x, w, offs=offsets)


@torch.library.custom_op("polycom::grouped_mm", mutates_args=())
def _grouped_mm_op(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor, mode: str) -> torch.Tensor:
    """``aten._grouped_mm`` behind an opaque op. ``mode`` "forward": a (M, K) x b (E, K, N) -> (M, N);
    "input_grad": a (M, N) x b (E, K, N) transposed -> (M, K); "weight_grad": a (M, K), b (M, N) -> (E, K, N),
    group e's sum of ``a_row^T b_row``."""
    if mode == "weight_grad":
        return torch._grouped_mm(a.contiguous().t(), b.contiguous(), offs=offs)
    return torch._grouped_mm(a.contiguous(), b.transpose(-2, -1) if mode == "input_grad" else b, offs=offs)


@_grouped_mm_op.register_fake
def _(a, b, offs, mode):
    if mode == "weight_grad":
        return a.new_empty(offs.shape[0], a.shape[1], b.shape[1])
    return a.new_empty(a.shape[0], b.shape[-2] if mode == "input_grad" else b.shape[-1])


def _grouped_mm_setup(ctx, inputs, output):
    a, b, offs, mode = inputs
    if mode != "forward":
        raise NotImplementedError("polycom::grouped_mm: only the forward mode is differentiable")
    ctx.save_for_backward(a, b, offs)


def _grouped_mm_backward(ctx, grad):
    a, b, offs = ctx.saved_tensors
    grad = grad.contiguous()
    grad_a = _grouped_mm_op(grad, b, offs, "input_grad") if ctx.needs_input_grad[0] else None
    grad_b = _grouped_mm_op(a, grad, offs, "weight_grad") if ctx.needs_input_grad[1] else None
    return grad_a, grad_b, None, None


_grouped_mm_op.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


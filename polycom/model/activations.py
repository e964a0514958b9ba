"""FFN activations, selected by config name.

PolyNorm and PolyReLU follow Zhuo et al., "Polynomial Composition Activations" (ICLR 2025):

    PolyReLU(x) = sum_{i=1..r} a_{r-i} * relu(x)^i + b
    PolyNorm(x) = sum_{i=1..r} a_{r-i} * N(x^i)  + b,   N(v) = v / sqrt(mean(v^2 over the last dim) + eps)

Parameters are laid out as in the official code (``weight`` of shape (r,), ``weight[0]`` multiplies the
highest power, each starting at 1/r; ``bias`` of shape (1,), starting at 0) so the official modules'
state dicts load unchanged.

How they are computed (``backend``, a plain attribute of each module, default ``"auto"``; the environment
variable ``POLYCOM_ACT_BACKEND`` sets the default for new modules). The autograd functions and their bodies
live in ``activation_kernels`` (the C kernels in ``cpu_kernels``):

- ``"eager"``: custom autograd functions with closed-form backward passes. PolyNorm keeps only its input
  and one inverse RMS per row and power (``(..., r)``, negligible) for backward; PolyReLU keeps only
  ``relu(x)`` (same size as the input, which it replaces; with the C kernels, the input itself). The
  naive form keeps every power and every normalized power (about seven hidden-sized tensors). On CPU in
  fp32 (half-precision inputs upcast first) they run small C kernels (OpenMP, one or two passes over each
  row while it is in L1), compiled with the system C compiler at first use and cached
  (``$POLYCOM_CACHE_DIR/kernels``, default ``~/.cache/polycom/kernels``). Elsewhere -- fp64 (gradcheck),
  CUDA, no working compiler (one RuntimeWarning), ``POLYCOM_CPU_KERNELS=0`` -- they run torch-op bodies
  that minimise passes over memory: row sums of squares with ``linalg.vector_norm``, polynomials by
  Horner's rule with ``addcmul(..., out=)`` into one buffer, coefficient-gradient sums as BLAS ``dot``s,
  the ReLU mask through ``threshold_backward``.
- ``"compiled"``: the same autograd functions with their forward/backward bodies written as plain tensor
  expressions and run through ``torch.compile`` (Inductor fuses each into one or two loops). Compiled
  lazily on first use (a few seconds per shape family); if compilation fails the module warns once and
  falls back to ``"eager"``.
- ``"liger"``: Liger-Kernel's Triton PolyNorm (CUDA only, order 3): see ``_liger_polynorm``. On CPU it is
  tested through a stand-in with Liger's interface and closed-form backward (``tests/test_liger.py``); the
  real kernel is compared with ``"eager"`` by that file's CUDA test, which runs only on a GPU machine.
- ``"reference"``: ``polynorm_reference`` / ``polyrelu_reference`` under plain autograd (for tests and
  comparisons; keeps every intermediate).
- ``"auto"``: Liger's PolyNorm on CUDA when ``liger_kernel`` imports and the order is 3, else ``"eager"``.

Whatever the backend, when the whole model is being compiled (``torch.compile(model)``;
``torch.compiler.is_compiling()`` is true while Dynamo traces) the autograd functions trace their
fused plain-expression bodies, so Inductor fuses them into the model's graph; the closed-form backward
and what is saved for it are kept.

Powers and norms are computed in at least fp32 whatever the input dtype (autocast is switched off inside),
so bf16/fp16 inputs cannot overflow in x^3; outputs and input gradients come back in the input's dtype.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .activation_kernels import _is_compiling, _PolyNormFunction, _PolyReLUFunction  # noqa: F401  (the functions: re-exported)

MIN_ORDER, MAX_ORDER = 1, 4
BACKENDS = ("auto", "eager", "compiled", "liger", "reference")
_DEFAULT_BACKEND = os.environ.get("POLYCOM_ACT_BACKEND", "auto")


# ---- Liger-Kernel (CUDA) ---------------------------------------------------------------------------------------
_LIGER_UNSET = object()
_liger_fn = _LIGER_UNSET
_LIGER_DEVICE_TYPES = ("cuda",)  # where Liger's Triton kernels run (the CPU tests add "cpu" for their stand-in)


def _liger_polynorm_function():
    """Liger-Kernel's ``LigerPolyNormFunction`` if ``liger_kernel`` imports, else None (looked up once)."""
    global _liger_fn
    if _liger_fn is _LIGER_UNSET:
        _liger_fn = None
        for module in ("liger_kernel.ops.poly_norm", "liger_kernel.ops"):
            try:
                _liger_fn = getattr(__import__(module, fromlist=["LigerPolyNormFunction"]), "LigerPolyNormFunction")
                break
            except Exception:  # not installed, no Triton, no GPU driver, older version without PolyNorm
                continue
    return _liger_fn


def _liger_applies(x: torch.Tensor, order: int) -> bool:
    """Whether Liger's PolyNorm can compute this call: order 3, an input on a device its kernels run on, and
    ``liger_kernel`` importable."""
    return order == 3 and x.device.type in _LIGER_DEVICE_TYPES and _liger_polynorm_function() is not None


@functools.lru_cache(maxsize=None)
def _liger_takes_in_place(fn) -> bool:
    return "in_place" in inspect.signature(fn.forward).parameters


def _liger_polynorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """PolyNorm through Liger-Kernel's Triton kernel (``liger_kernel.ops.poly_norm.LigerPolyNormFunction``).

    What it relies on, read from Liger's source (liger-kernel 0.8.5, ``ops/poly_norm.py``): order 3 only; ``W``
    of shape (3,) with ``W[0]`` multiplying x^3 (the same layout as ``PolyNorm.weight``, so no reordering);
    ``B`` one element, and backward returns its gradient 0-d (``_dB.sum()``), so ours, of shape (1,), is passed
    as a 0-d view (a (1,)-shaped bias would make autograd reject the 0-d gradient: "invalid gradient at index
    2"); ``eps`` added to mean(u^2) inside the square root, as here (default 1e-6); it keeps the input and a
    (rows, 3) fp32 inverse-RMS for backward, like the eager path. Its forward arithmetic runs in the input dtype,
    so half-precision inputs are upcast to fp32 before the call (fp32 internals, at the cost of saving an fp32
    copy of x) and the output is cast back. ``in_place=False`` is passed when the installed version has that
    argument (its default, True, overwrites ``grad_output`` in backward). Liger's own ``LigerPolyNorm`` module
    starts its bias at 1.0; ours keeps the paper's 0 (only the function is used).
    """
    fn = _liger_polynorm_function()
    dtype = x.dtype
    xf = x if dtype in (torch.float32, torch.float64) else x.float()
    shape = xf.shape
    args = (xf.reshape(-1, shape[-1]).contiguous(), weight, bias.reshape(()), eps)
    if _liger_takes_in_place(fn):
        args = args + (False,)
    return fn.apply(*args).reshape(shape).to(dtype)


def _full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (sharded) DTensor (gathered from every process), else the tensor itself."""
    full = getattr(tensor, "full_tensor", None)
    return full() if full is not None else tensor


# ---- modules ---------------------------------------------------------------------------------------------------
class _PolyCom(nn.Module):
    """Shared parameters of the PolyCom activations: r coefficients (highest power first) and a bias.

    ``backend`` (not part of the state dict) picks the implementation; see the module docstring.
    """

    # Parameters the optimizer must leave out of weight decay (read by polycom.train.optim).
    no_weight_decay_params = ("weight", "bias")

    def __init__(self, order: int = 3):
        super().__init__()
        if not MIN_ORDER <= order <= MAX_ORDER:
            raise ValueError(f"activation order must be in {MIN_ORDER}..{MAX_ORDER}, got {order}")
        self.order = order
        self.weight = nn.Parameter(torch.empty(order))
        self.bias = nn.Parameter(torch.empty(1))
        self.backend = _DEFAULT_BACKEND
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0 / self.order)
            self.bias.zero_()

    # The activation protocol (besides ``no_weight_decay_params``): how the model initialises the module, and
    # what the trainer logs of it. Nothing outside this file needs to know the class.
    @torch.no_grad()
    def init_weights_(self, std: float | None = None, residual_std: float | None = None) -> None:
        """The official init (every a_i = 1/r, b = 0), through transformers' initialization functions, which
        leave weights loaded by ``from_pretrained`` alone."""
        from transformers import initialization as init

        init.constant_(self.weight, 1.0 / self.order)
        init.zeros_(self.bias)

    def log_values(self) -> dict[str, float]:
        """``a0`` (multiplies the highest power) .. ``a{r-1}`` and ``b``.

        Under FSDP the coefficients are sharded ``DTensor``s: they are gathered first, a collective, so every
        process must call this, in the same order (``activation_values`` on every rank does)."""
        weight, bias = (_full_tensor(p.detach()).float() for p in (self.weight, self.bias))
        values = {f"a{i}": a for i, a in enumerate(weight.tolist())}
        values["b"] = bias.item()
        return values

    def extra_repr(self) -> str:
        return f"order={self.order}" + ("" if self.backend == "auto" else f", backend={self.backend}")

    def _resolved_backend(self, x: torch.Tensor) -> str:
        backend = self.backend
        if backend not in BACKENDS:
            raise ValueError(f"activation backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            use_liger = isinstance(self, PolyNorm) and not _is_compiling() and _liger_applies(x, self.order)
            return "liger" if use_liger else "eager"
        return backend


class PolyNorm(_PolyCom):
    def __init__(self, order: int = 3, eps: float = 1e-6):
        super().__init__(order)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self._resolved_backend(x)
        if backend == "reference":
            return polynorm_reference(x, self.weight, self.bias, self.eps)
        if backend == "liger":
            if not _liger_applies(x, self.order):
                raise RuntimeError("backend='liger' needs a CUDA input, order 3 and an importable liger_kernel")
            return _liger_polynorm(x, self.weight, self.bias, self.eps)
        return _PolyNormFunction.apply(x, self.weight, self.bias, self.eps, backend == "compiled")


class PolyReLU(_PolyCom):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self._resolved_backend(x)
        if backend == "reference":
            return polyrelu_reference(x, self.weight, self.bias)
        if backend == "liger":
            raise RuntimeError("Liger-Kernel has no PolyReLU; use backend 'auto', 'eager' or 'compiled'")
        return _PolyReLUFunction.apply(x, self.weight, self.bias, backend == "compiled")


class ReLU2(nn.Module):
    """Squared ReLU (So et al., Primer).

    ``r * r``, not ``r.square()``: ``square`` is ``pow(r, 2)``, which CUDA autocast runs in fp32 (an fp32 copy of
    the bf16 input kept for backward and an fp32 output, 6 bytes per element more than here); ``mul`` keeps the
    input's dtype under every autocast. Same values: the product of two bf16 (or fp32) numbers is rounded once
    either way, and the gradient ``g*r + g*r`` equals ``pow``'s ``g * 2r``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.relu(x)
        return r * r


def set_activation_backend(model: nn.Module, backend: str) -> int:
    """Set ``backend`` on every PolyCom activation of ``model``; returns how many modules were changed."""
    if backend not in BACKENDS:
        raise ValueError(f"activation backend must be one of {BACKENDS}, got {backend!r}")
    n = 0
    for module in model.modules():
        if isinstance(module, _PolyCom):
            module.backend = backend
            n += 1
    return n


@dataclass(frozen=True)
class ActivationSpec:
    """How an activation shapes its FFN.

    ``gated`` FFNs compute ``W2 (act(Wg x) * Wu x)`` with three matrices; the others ``W2 act(W1 x)``
    with two, so they get 1.5x the hidden width to match parameter counts.
    """

    name: str
    gated: bool
    build: Callable[[int, float], nn.Module]  # (order, eps) -> elementwise activation module
    polycom: bool = False
    orders: tuple[int, ...] = tuple(range(MIN_ORDER, MAX_ORDER + 1))  # the ``activation.order`` values it accepts


ACTIVATIONS: dict[str, ActivationSpec] = {
    spec.name: spec
    for spec in (
        ActivationSpec("relu", gated=False, build=lambda order, eps: nn.ReLU()),
        ActivationSpec("gelu", gated=False, build=lambda order, eps: nn.GELU(approximate="none")),
        ActivationSpec("swiglu", gated=True, build=lambda order, eps: nn.SiLU()),
        ActivationSpec("relu2", gated=False, build=lambda order, eps: ReLU2()),
        ActivationSpec("polyrelu", gated=False, build=lambda order, eps: PolyReLU(order), polycom=True),
        ActivationSpec("polynorm", gated=False, build=PolyNorm, polycom=True),
        # The gated PolyNorm variants (classes at the end of this file, with their sources): SwiGLU's width
        ActivationSpec("gated_polynorm", gated=True, build=lambda order, eps: GatedPolyNorm(order, eps), polycom=True),
        ActivationSpec("pnglu", gated=True, build=lambda order, eps: PNGLU(order, eps), polycom=True, orders=(2, 3)),
    )
}


def get_activation(name: str) -> ActivationSpec:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}") from None


def polynorm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PolyNorm written plainly (every intermediate kept for autograd); used by tests and benchmarks."""
    order = weight.shape[0]
    out = bias
    for k in range(1, order + 1):
        p = x**k
        out = out + weight[order - k] * (p * torch.rsqrt(p.pow(2).mean(-1, keepdim=True) + eps))
    return out


class OfficialPolyNorm(nn.Module):
    """PolyNorm as the official README writes it (order 3): three powers, three RMS norms, autograd keeps every
    intermediate. The layout ``PolyNorm`` matches (its state dicts load into ``PolyNorm``); the benchmark's
    ``polynorm_naive`` reference."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3) / 3)
        self.bias = nn.Parameter(torch.zeros(1))
        self.eps = eps

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        return (self.weight[0] * self._norm(x**3) + self.weight[1] * self._norm(x**2)
                + self.weight[2] * self._norm(x) + self.bias)


def polyrelu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    order = weight.shape[0]
    r = F.relu(x)
    return sum(weight[order - k] * r**k for k in range(1, order + 1)) + bias


# ---- gated PolyNorm variants -------------------------------------------------------------------------------------
class GatedPolyNorm(PolyNorm):
    """PolyNorm as the gate of a gated linear unit: the FFN computes ``W2 (PolyNorm(Wg x) * Wu x)`` with SwiGLU's
    hidden width (registry entry ``gated_polynorm``). The module is ``PolyNorm`` itself (order r, coefficients
    1/r, bias 0, eps 1e-6, every backend and kernel), applied to the gate half only.

    Source: Motif Technologies' Motif-2.6B (Motif 2.6B technical report, 2025), whose MLP is
    ``down_proj(PolyNorm(gate) * up)`` with one fused gate|up projection of ``intermediate_size`` each and the
    official order-3 PolyNorm (``weight`` = ones(3)/3, ``bias`` = 0, eps 1e-6): vLLM's implementation of the model,
    ``vllm/model_executor/models/motif.py`` (``MotifMLP``) with ``PolyNorm`` from
    ``vllm/model_executor/layers/layernorm.py``. Later Motif ports (MLX) reparametrise the coefficients through a
    sigmoid and scale the output; that variant is not implemented here.
    """


class PNGLU(nn.Module):
    """swiss-ai's PolyNorm GLU gate, order 2 (Megatron's ``--pnglu``) or 3 (``--pn3glu``), registry entry ``pnglu``:

        gate(x) = sum_{i=1..r} |a_i| * N(x^i),   N(v) = v / sqrt(mean(v^2 over the last dim) + eps)

    in the FFN ``W2 (gate(Wg x) * Wu x)`` with SwiGLU's hidden width. Unlike PolyNorm: the coefficients pass through
    ``abs`` (the gate's terms keep a positive weight), they start at 0.2 (not 1/r), and there is no bias. Computed
    in fp32 for half-precision inputs (as the source does) and returned in the input dtype; plain autograd (every
    power and normalized power is kept for backward, like ``OfficialPolyNorm``).

    Source: swiss-ai/Megatron-LM-MoE, ``megatron/core/activations.py``, class ``PolyNorm`` (``compiled_polynorm``:
    ``a1*RMSNorm(x) + a2*RMSNorm(x*x)`` with ``alpha_1 = |alpha_1|``, ``alpha_2 = |alpha_2|``, ``alpha_init=0.2``,
    ``eps=1e-6``; ``num_terms=3`` adds ``|alpha_3| * RMSNorm(x**3)``), read at commit 05a61ea.

    Layout as PolyCom's: ``weight[0]`` multiplies the highest power, i.e. ``weight = [alpha_r, ..., alpha_1]``.
    """

    no_weight_decay_params = ("weight",)
    ORDERS = (2, 3)
    INIT = 0.2

    def __init__(self, order: int = 2, eps: float = 1e-6):
        super().__init__()
        if order not in self.ORDERS:
            raise ValueError(f"pnglu's order (activation.order) must be one of {self.ORDERS}, got {order}")
        self.order, self.eps = order, eps
        self.weight = nn.Parameter(torch.full((order,), self.INIT))

    @torch.no_grad()
    def init_weights_(self, std: float | None = None, residual_std: float | None = None) -> None:
        """Every coefficient 0.2, through transformers' initialization functions (weights loaded by
        ``from_pretrained`` are left alone)."""
        from transformers import initialization as init

        init.constant_(self.weight, self.INIT)

    def log_values(self) -> dict[str, float]:
        """The effective coefficients ``|a|``: ``a0`` multiplies the highest power."""
        weight = _full_tensor(self.weight.detach()).float().abs()
        return {f"a{i}": a for i, a in enumerate(weight.tolist())}

    def extra_repr(self) -> str:
        return f"order={self.order}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x if dtype in (torch.float32, torch.float64) else x.float()
        out, power = None, None
        for i in range(1, self.order + 1):
            power = xf if power is None else power * xf
            term = self.weight[self.order - i].abs().to(xf.dtype) * (
                power * torch.rsqrt(power.square().mean(-1, keepdim=True) + self.eps))
            out = term if out is None else out + term
        return out.to(dtype)

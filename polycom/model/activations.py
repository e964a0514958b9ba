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
- ``"liger"``: Liger-Kernel's Triton PolyNorm (CUDA only, order 3). **Untested here** (no GPU, no
  Triton on the development machine): see ``_liger_polynorm``.
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
_liger_has_in_place = False


def _liger_polynorm_function():
    """Liger-Kernel's ``LigerPolyNormFunction`` if ``liger_kernel`` imports, else None (looked up once)."""
    global _liger_fn, _liger_has_in_place
    if _liger_fn is _LIGER_UNSET:
        _liger_fn = None
        for module in ("liger_kernel.ops.poly_norm", "liger_kernel.ops"):
            try:
                _liger_fn = getattr(__import__(module, fromlist=["LigerPolyNormFunction"]), "LigerPolyNormFunction")
                _liger_has_in_place = "in_place" in inspect.signature(_liger_fn.forward).parameters
                break
            except Exception:  # not installed, no Triton, no GPU driver, older version without PolyNorm
                continue
    return _liger_fn


def _liger_polynorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """PolyNorm through Liger-Kernel's Triton kernel (``liger_kernel.ops.poly_norm.LigerPolyNormFunction``).

    UNTESTED HERE: the development machine has no GPU and no Triton, so this path has never run in this
    project's test suite. What it relies on, read from Liger's source: order 3 only; ``W`` of shape (3,)
    with ``W[0]`` multiplying x^3 (the same layout as ``PolyNorm.weight``, so no reordering); ``B`` any
    one-element tensor (Liger's own module uses a 0-d bias, ours is (1,)); ``eps`` added to mean(u^2)
    inside the square root, as here (default 1e-6); it keeps the input and a (rows, 3) fp32 inverse-RMS for
    backward, like the eager path. Its Triton arithmetic runs in the input dtype, so half-precision inputs
    are upcast to fp32 before the call (fp32 internals, at the cost of saving an fp32 copy of x) and the
    output is cast back. ``in_place=False`` is passed when the installed version has that argument (its
    default, True, overwrites ``grad_output`` in backward).
    """
    fn = _liger_polynorm_function()
    dtype = x.dtype
    xf = x if dtype in (torch.float32, torch.float64) else x.float()
    shape = xf.shape
    args = (xf.reshape(-1, shape[-1]).contiguous(), weight, bias, eps)
    if _liger_has_in_place:
        args = args + (False,)
    return fn.apply(*args).reshape(shape).to(dtype)


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
        """``a0`` (multiplies the highest power) .. ``a{r-1}`` and ``b``."""
        values = {f"a{i}": a for i, a in enumerate(self.weight.detach().float().tolist())}
        values["b"] = self.bias.detach().float().item()
        return values

    def extra_repr(self) -> str:
        return f"order={self.order}" + ("" if self.backend == "auto" else f", backend={self.backend}")

    def _resolved_backend(self, x: torch.Tensor) -> str:
        backend = self.backend
        if backend not in BACKENDS:
            raise ValueError(f"activation backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            use_liger = (isinstance(self, PolyNorm) and x.is_cuda and self.order == 3 and not _is_compiling()
                         and _liger_polynorm_function() is not None)
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
            if not (x.is_cuda and self.order == 3 and _liger_polynorm_function() is not None):
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
    """Squared ReLU (So et al., Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


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


ACTIVATIONS: dict[str, ActivationSpec] = {
    spec.name: spec
    for spec in (
        ActivationSpec("relu", gated=False, build=lambda order, eps: nn.ReLU()),
        ActivationSpec("gelu", gated=False, build=lambda order, eps: nn.GELU(approximate="none")),
        ActivationSpec("swiglu", gated=True, build=lambda order, eps: nn.SiLU()),
        ActivationSpec("relu2", gated=False, build=lambda order, eps: ReLU2()),
        ActivationSpec("polyrelu", gated=False, build=lambda order, eps: PolyReLU(order), polycom=True),
        ActivationSpec("polynorm", gated=False, build=PolyNorm, polycom=True),
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

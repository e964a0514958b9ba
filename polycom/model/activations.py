"""FFN activations, selected by config name.

PolyNorm and PolyReLU follow Zhuo et al., "Polynomial Composition Activations" (ICLR 2025):

    PolyReLU(x) = sum_{i=1..r} a_{r-i} * relu(x)^i + b
    PolyNorm(x) = sum_{i=1..r} a_{r-i} * N(x^i)  + b,   N(v) = v / sqrt(mean(v^2 over the last dim) + eps)

Parameters are laid out as in the official code (``weight`` of shape (r,), ``weight[0]`` multiplies the
highest power, each starting at 1/r; ``bias`` of shape (1,), starting at 0) so the official modules'
state dicts load unchanged.

How they are computed (``backend``, a plain attribute of each module, default ``"auto"``; the environment
variable ``POLYCOM_ACT_BACKEND`` sets the default for new modules):

- ``"eager"``: custom autograd functions with closed-form backward passes. PolyNorm keeps only its input
  and one inverse RMS per row and power (``(..., r)``, negligible) for backward; PolyReLU keeps only
  ``relu(x)`` (same size as the input, which it replaces). The naive form keeps every power and every
  normalized power (about seven hidden-sized tensors). The bodies are written for eager PyTorch on CPU:
  every elementwise op is a full pass over memory, so they minimise passes -- row sums of squares with
  ``linalg.vector_norm`` (a fused reduction, no temporary), polynomials by Horner's rule with
  ``addcmul(..., out=)`` into one buffer, global coefficient-gradient sums as BLAS ``dot``s, the ReLU
  mask through the ReLU backward kernel (``threshold_backward``), no ``zeros_like`` + add chains.
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
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

MIN_ORDER, MAX_ORDER = 1, 4
BACKENDS = ("auto", "eager", "compiled", "liger", "reference")
_DEFAULT_BACKEND = os.environ.get("POLYCOM_ACT_BACKEND", "auto")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half-precision inputs, the input's own dtype for fp32/fp64 (gradcheck runs in fp64)."""
    return torch.promote_types(x.dtype, torch.float32)


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


# ---- PolyNorm bodies ----------------------------------------------------------------------------------------
# Notation (per row, h = hidden size): p_k = x^k, r_k = 1/sqrt(mean(p_k^2) + eps), A_k = a_k r_k with a_k the
# coefficient of power k (weight[order - k]), d_k = sum_j g_j p_k,j.
#   y      = sum_k A_k p_k + b
#   dL/dx  = g * sum_k k A_k x^(k-1)  -  sum_k B_k x^(2k-1),      B_k = k A_k r_k^2 d_k / h
#   dL/da_k = sum_rows r_k d_k,   dL/db = sum g


def _polynorm_forward_eager(x, w, b, eps: float):
    """(out, inv_rms (..., order)); column k-1 of inv_rms belongs to x^k. x, w, b in the compute dtype.

    Only ops that TensorIterator vectorises are used: an elementwise op with at most one operand broadcast
    along the row (``addcmul(c, x, c2)`` with two broadcast operands falls back to a scalar loop, ~4x slower).
    """
    order, h = w.shape[0], x.shape[-1]
    powers = [x]
    for _ in range(order - 1):
        powers.append(powers[-1] * x)
    # sum of p_k^2 per row: the row sum of p_2k when it exists, else a fused vector_norm (no temporary)
    sq = torch.stack([powers[2 * k - 1].sum(-1) if 2 * k <= order else torch.linalg.vector_norm(powers[k - 1], dim=-1).square_()
                      for k in range(1, order + 1)], dim=-1)
    inv_rms = torch.rsqrt(sq.div_(h).add_(eps))
    coef = inv_rms * w.flip(0)  # (..., order): A_k
    top = coef[..., order - 1 : order]
    out = powers[-1].mul_(top) if order > 1 else x * top  # the highest power is ours to overwrite
    for k in range(order - 1, 0, -1):
        out.addcmul_(powers[k - 1], coef[..., k - 1 : k])
    return out.add_(b), inv_rms


def _polynorm_backward_eager(g, x, w, inv_rms):
    order, h = w.shape[0], x.shape[-1]
    # d_k = sum_j g x^k per row, in one buffer multiplied in place
    t = g * x
    d = [t.sum(-1)]
    for _ in range(order - 1):
        t.mul_(x)
        d.append(t.sum(-1))
    d = torch.stack(d, dim=-1)  # (..., order)
    k = torch.arange(1, order + 1, dtype=x.dtype, device=x.device)
    ka = w.flip(0) * inv_rms * k  # k A_k
    kb = ka * inv_rms.square() * d / h  # B_k
    grad_w = (inv_rms * d).reshape(-1, order).sum(0).flip(0)
    grad_b = g.sum().reshape(1)
    col = lambda c, j: c[..., j - 1 : j]  # column of power j, kept 2-D for broadcasting
    if order == 1:
        grad_x = torch.mul(g, col(ka, 1), out=t)
        return grad_x.addcmul_(x, col(kb, 1), value=-1), grad_w, grad_b
    # q = g * P'(x), P'(x) = sum_k k A_k x^(k-1) by Horner's rule, reusing t
    q = torch.mul(x, col(ka, order), out=t).add_(col(ka, order - 1))
    for j in range(order - 2, 0, -1):
        torch.addcmul(col(ka, j), q, x, out=q)
    q.mul_(g)
    # u = Q(x^2), Q(v) = sum_k B_k v^(k-1); grad = q - u * x
    x2 = x * x
    u = torch.mul(x2, col(kb, order)).add_(col(kb, order - 1))
    for j in range(order - 2, 0, -1):
        torch.addcmul(col(kb, j), u, x2, out=u)
    del x2
    return q.addcmul_(u, x, value=-1), grad_w, grad_b


def _polynorm_forward_fused(x, w, b, eps: float):
    """Same as the eager body, as plain expressions for Inductor to fuse."""
    order = w.shape[0]
    powers = [x]
    for _ in range(order - 1):
        powers.append(powers[-1] * x)
    inv_rms = torch.cat([torch.rsqrt(p.square().mean(-1, keepdim=True) + eps) for p in powers], dim=-1)
    coef = inv_rms * w.flip(0)
    out = b + powers[0] * coef[..., 0:1]
    for k in range(1, order):
        out = out + powers[k] * coef[..., k : k + 1]
    return out, inv_rms


def _polynorm_backward_fused(g, x, w, inv_rms):
    order, h = w.shape[0], x.shape[-1]
    powers = [x]
    for _ in range(order - 1):
        powers.append(powers[-1] * x)
    d = torch.cat([(g * p).sum(-1, keepdim=True) for p in powers], dim=-1)
    k = torch.arange(1, order + 1, dtype=x.dtype, device=x.device)
    a = w.flip(0) * inv_rms
    ka = a * k
    kb = ka * inv_rms.square() * d / h
    deriv = ka[..., 0:1]  # sum_k k A_k x^(k-1)
    second = kb[..., 0:1] * x  # sum_k B_k x^(2k-1)
    for j in range(1, order):
        deriv = deriv + ka[..., j : j + 1] * powers[j - 1]
        second = second + kb[..., j : j + 1] * (powers[j] * powers[j - 1])
    grad_x = g * deriv - second
    grad_w = (inv_rms * d).reshape(-1, order).sum(0).flip(0)
    return grad_x, grad_w, g.sum().reshape(1)


# ---- PolyReLU bodies ----------------------------------------------------------------------------------------
# r = relu(x); y = sum_k a_k r^k + b; dL/dx = g [x > 0] sum_k k a_k r^(k-1); dL/da_k = sum g r^k; dL/db = sum g.
# Only r is saved: x > 0 exactly where r > 0, so the mask comes from r too.


def _polyrelu_forward_eager(r, w, b):
    """r = relu(x) in the compute dtype; Horner's rule ((a0 r + a1) r + a2) r + b in one buffer."""
    order = w.shape[0]
    out = r * w[0]
    if order == 1:
        return out.add_(b)
    out.add_(w[1])
    for j in range(2, order):
        torch.addcmul(w[j], out, r, out=out)
    return torch.addcmul(b, out, r, out=out)


def _polyrelu_backward_eager(g, r, w):
    order = w.shape[0]
    gm = torch.ops.aten.threshold_backward(g, r, 0)  # g where x > 0, else 0 (the ReLU backward kernel)
    gm_flat, r_flat = gm.reshape(-1), r.reshape(-1)
    sums = [torch.dot(gm_flat, r_flat)]  # sum g r^k, one BLAS dot each (no temporary)
    if order > 1:
        t = gm_flat * r_flat
        sums.append(torch.dot(t, r_flat))
        for _ in range(order - 2):
            t.mul_(r_flat)
            sums.append(torch.dot(t, r_flat))
        del t
    grad_w = torch.stack(sums).flip(0)
    grad_b = g.sum().reshape(1)
    kw = w * torch.arange(order, 0, -1, dtype=w.dtype, device=w.device)  # k a_k, highest power first
    if order == 1:
        return gm.mul_(kw[0]), grad_w, grad_b
    q = torch.mul(r, kw[0]).add_(kw[1])
    for j in range(2, order):
        torch.addcmul(kw[j], q, r, out=q)
    return q.mul_(gm), grad_w, grad_b


def _polyrelu_forward_fused(r, w, b):
    order = w.shape[0]
    out = w[0] * r
    for j in range(1, order):
        out = (out + w[j]) * r
    return out + b


def _polyrelu_backward_fused(g, r, w):
    order = w.shape[0]
    gm = torch.where(r > 0, g, torch.zeros_like(g))
    powers = [r]
    for _ in range(order - 1):
        powers.append(powers[-1] * r)
    grad_w = torch.stack([(gm * p).sum() for p in powers]).flip(0)
    kw = w * torch.arange(order, 0, -1, dtype=w.dtype, device=w.device)
    deriv = kw[0] * torch.ones_like(r) if order == 1 else kw[0] * r + kw[1]
    for j in range(2, order):
        deriv = deriv * r + kw[j]
    return gm * deriv, grad_w, g.sum().reshape(1)


# ---- torch.compile'd bodies (backend "compiled" in an eager model) ---------------------------------------------
_COMPILED: dict[str, Callable] = {}
_COMPILE_FAILED = False
_FUSED = {
    "polynorm_fwd": _polynorm_forward_fused,
    "polynorm_bwd": _polynorm_backward_fused,
    "polyrelu_fwd": _polyrelu_forward_fused,
    "polyrelu_bwd": _polyrelu_backward_fused,
}
_EAGER = {
    "polynorm_fwd": _polynorm_forward_eager,
    "polynorm_bwd": _polynorm_backward_eager,
    "polyrelu_fwd": _polyrelu_forward_eager,
    "polyrelu_bwd": _polyrelu_backward_eager,
}


def _body(name: str, compiled: bool) -> Callable:
    """The function computing ``name``: traced plainly while Dynamo compiles the caller, a torch.compile'd
    copy for the "compiled" backend, the pass-minimising eager body otherwise."""
    if _is_compiling():
        return _FUSED[name]
    if not compiled or _COMPILE_FAILED:
        return _EAGER[name]
    fn = _COMPILED.get(name)
    if fn is None:
        fn = _COMPILED[name] = torch.compile(_FUSED[name], fullgraph=True, dynamic=None)
    return fn


def _run(name: str, compiled: bool, *args):
    global _COMPILE_FAILED
    fn = _body(name, compiled)
    if fn is _FUSED[name] or fn is _EAGER[name]:
        return fn(*args)
    try:
        return fn(*args)
    except Exception as exc:  # compiler missing or broken: warn once and stay eager
        if _COMPILE_FAILED:
            raise
        _COMPILE_FAILED = True
        warnings.warn(f"torch.compile of the PolyCom activations failed ({type(exc).__name__}: {exc}); "
                      "falling back to the eager implementation", RuntimeWarning, stacklevel=3)
        return _EAGER[name](*args)


class _PolyNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, compiled: bool = False):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            out, inv_rms = _run("polynorm_fwd", compiled, x.to(dtype), weight.to(dtype), bias.to(dtype), eps)
        ctx.save_for_backward(x, weight, inv_rms)
        ctx.compiled = compiled
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, inv_rms = ctx.saved_tensors
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            grad_x, grad_w, grad_b = _run("polynorm_bwd", ctx.compiled, grad_out.to(dtype), x.to(dtype),
                                          weight.to(dtype), inv_rms)
        return grad_x.to(x.dtype), grad_w.to(weight.dtype), grad_b.to(weight.dtype), None, None


class _PolyReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, compiled: bool = False):
        dtype = _compute_dtype(x)
        relu_x = torch.relu(x)  # exact in any dtype; saved instead of x (same size)
        with torch.autocast(x.device.type, enabled=False):
            out = _run("polyrelu_fwd", compiled, relu_x.to(dtype), weight.to(dtype), bias.to(dtype))
        ctx.save_for_backward(relu_x, weight)
        ctx.compiled = compiled
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        relu_x, weight = ctx.saved_tensors
        dtype = _compute_dtype(relu_x)
        with torch.autocast(relu_x.device.type, enabled=False):
            grad_x, grad_w, grad_b = _run("polyrelu_bwd", ctx.compiled, grad_out.to(dtype), relu_x.to(dtype),
                                          weight.to(dtype))
        return grad_x.to(relu_x.dtype), grad_w.to(weight.dtype), grad_b.to(weight.dtype), None


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

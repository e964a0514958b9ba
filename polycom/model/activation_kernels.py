"""The PolyNorm / PolyReLU autograd functions and the bodies they run (see ``activations`` for the modules).

Each function has a closed-form backward and keeps little for it: PolyNorm its input and one inverse RMS per
row and power (``(..., r)``), PolyReLU one input-sized tensor -- ``relu(x)``, or with the C kernels ``x``
itself (their backward recomputes relu(x) in its one pass, and the forward then writes only the output).
Which body computes a forward or backward:

- while Dynamo traces the caller (``torch.compile(model)``): the *fused* bodies, plain tensor expressions
  that Inductor fuses into the model's graph;
- backend ``"compiled"``: the fused bodies through ``torch.compile`` (lazily, on first use; if compilation
  fails, one RuntimeWarning and ``"eager"`` from then on);
- backend ``"eager"``: on CPU in fp32 (half-precision inputs are upcast first), the C kernels of
  ``cpu_kernels`` (one or two passes over each row, compiled at first use and cached); elsewhere (fp64 --
  gradcheck --, CUDA, no working C compiler, ``POLYCOM_CPU_KERNELS=0``) the *eager* torch-op bodies below,
  written to minimise passes over memory.

Powers and norms are computed in at least fp32 whatever the input dtype (autocast is switched off inside);
outputs and input gradients come back in the input's dtype.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from .cpu_kernels import available as _cpu_kernels_available
from .cpu_kernels import polynorm_backward, polynorm_forward, polyrelu_backward, polyrelu_forward


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


def _polyrelu_forward_eager(x, w, b):
    """(relu(x) in x's dtype -- exact in any dtype, kept for backward --, out in the compute dtype of w);
    Horner's rule ((a0 r + a1) r + a2) r + b in one buffer."""
    relu_x = torch.relu(x)
    r = relu_x.to(w.dtype)
    order = w.shape[0]
    out = r * w[0]
    if order == 1:
        return relu_x, out.add_(b)
    out.add_(w[1])
    for j in range(2, order):
        torch.addcmul(w[j], out, r, out=out)
    return relu_x, torch.addcmul(b, out, r, out=out)


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


def _polyrelu_forward_fused(x, w, b):
    relu_x = torch.relu(x)
    r = relu_x.to(w.dtype)
    out = w[0] * r
    for j in range(1, w.shape[0]):
        out = (out + w[j]) * r
    return relu_x, out + b


def _polyrelu_forward_cpu(x, w, b):
    """The C kernel: (x itself, to keep for backward -- the C backward recomputes relu(x) on the fly, so nothing
    but the output is written here --, out)."""
    return x, polyrelu_forward(x.to(w.dtype), w, b)


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


# ---- choosing a body -------------------------------------------------------------------------------------------
_COMPILED: dict[str, Callable] = {}  # torch.compile'd fused bodies (backend "compiled" in an eager model)
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
_CPU = {
    "polynorm_fwd": polynorm_forward,
    "polynorm_bwd": polynorm_backward,
    "polyrelu_fwd": _polyrelu_forward_cpu,
    "polyrelu_bwd": polyrelu_backward,
}


def _body(name: str, compiled: bool, x: torch.Tensor, dtype: torch.dtype) -> Callable:
    """The function computing ``name`` on the hidden-sized tensor ``x`` in compute dtype ``dtype``: traced
    plainly while Dynamo compiles the caller, a torch.compile'd copy for the "compiled" backend, else the C
    kernel on CPU fp32 when it is available, else the pass-minimising torch-op body."""
    if _is_compiling():
        return _FUSED[name]
    if compiled and not _COMPILE_FAILED:
        fn = _COMPILED.get(name)
        if fn is None:
            fn = _COMPILED[name] = torch.compile(_FUSED[name], fullgraph=True, dynamic=None)
        return fn
    if x.device.type == "cpu" and dtype == torch.float32 and x.dim() > 0 and x.shape[-1] > 0 \
            and _cpu_kernels_available():
        return _CPU[name]
    return _EAGER[name]


def _run(name: str, compiled: bool, dtype: torch.dtype, *args, body: Callable | None = None):
    """``name`` on ``args`` (``args[0]`` hidden-sized, ``dtype`` the compute dtype), by ``body`` when the caller
    has already chosen it with ``_body``."""
    global _COMPILE_FAILED
    fn = body or _body(name, compiled, args[0], dtype)
    if fn is not _COMPILED.get(name):
        return fn(*args)
    try:
        return fn(*args)
    except Exception as exc:  # compiler missing or broken: warn once and stay eager
        if _COMPILE_FAILED:
            raise
        _COMPILE_FAILED = True
        warnings.warn(f"torch.compile of the PolyCom activations failed ({type(exc).__name__}: {exc}); "
                      "falling back to the eager implementation", RuntimeWarning, stacklevel=3)
        return _body(name, False, args[0], dtype)(*args)


class _PolyNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, compiled: bool = False):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            out, inv_rms = _run("polynorm_fwd", compiled, dtype, x.to(dtype), weight.to(dtype), bias.to(dtype), eps)
        ctx.save_for_backward(x, weight, inv_rms)
        ctx.compiled = compiled
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, inv_rms = ctx.saved_tensors
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            grad_x, grad_w, grad_b = _run("polynorm_bwd", ctx.compiled, dtype, grad_out.to(dtype), x.to(dtype),
                                          weight.to(dtype), inv_rms)
        return grad_x.to(x.dtype), grad_w.to(weight.dtype), grad_b.to(weight.dtype), None, None


class _PolyReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, compiled: bool = False):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):  # kept: relu(x) (x for the C kernels), x's dtype
            kept, out = _run("polyrelu_fwd", compiled, dtype, x, weight.to(dtype), bias.to(dtype))
        ctx.save_for_backward(kept, weight)
        ctx.compiled, ctx.kept_input = compiled, kept is x
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        kept, weight = ctx.saved_tensors
        dtype = _compute_dtype(kept)
        with torch.autocast(kept.device.type, enabled=False):
            g, r = grad_out.to(dtype), kept.to(dtype)
            body = _body("polyrelu_bwd", ctx.compiled, g, dtype)
            if ctx.kept_input and body is not polyrelu_backward:
                r = torch.relu(r)  # the C kernel's forward kept x; the other bodies take relu(x)
            grad_x, grad_w, grad_b = _run("polyrelu_bwd", ctx.compiled, dtype, g, r, weight.to(dtype), body=body)
        return grad_x.to(kept.dtype), grad_w.to(weight.dtype), grad_b.to(weight.dtype), None

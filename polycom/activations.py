"""FFN activations, selected by config name.

PolyNorm and PolyReLU follow Zhuo et al., "Polynomial Composition Activations" (ICLR 2025):

    PolyReLU(x) = sum_{i=1..r} a_{r-i} * relu(x)^i + b
    PolyNorm(x) = sum_{i=1..r} a_{r-i} * N(x^i)  + b,   N(v) = v / sqrt(mean(v^2 over the last dim) + eps)

Parameters are laid out as in the official code (``weight`` of shape (r,), ``weight[0]`` multiplies the
highest power, each starting at 1/r; ``bias`` of shape (1,), starting at 0) so the official modules'
state dicts load unchanged.

Both are computed by custom autograd functions that keep only the input (and, for PolyNorm, one
inverse-RMS per row and power) for backward and recompute the powers there. The naive form keeps
every power and every normalized power (about seven hidden-sized tensors); this keeps one. Powers and
norms are computed in at least fp32 whatever the input dtype, so bf16/fp16 inputs cannot overflow in x^3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

MIN_ORDER, MAX_ORDER = 1, 4


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half-precision inputs, the input's own dtype for fp32/fp64 (gradcheck runs in fp64)."""
    return torch.promote_types(x.dtype, torch.float32)


class _PolyNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        dtype = _compute_dtype(x)
        xf, w = x.to(dtype), weight.to(dtype)
        order = weight.shape[0]
        out = bias.to(dtype).expand(xf.shape).clone()
        power = torch.ones_like(xf)
        inv_rms = []
        for k in range(1, order + 1):
            power = power * xf
            r = torch.rsqrt(power.square().mean(-1, keepdim=True) + eps)
            inv_rms.append(r)
            out.addcmul_(power, r * w[order - k])
        ctx.save_for_backward(x, weight, torch.cat(inv_rms, dim=-1))
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, inv_rms = ctx.saved_tensors
        dtype = _compute_dtype(x)
        xf, w, g = x.to(dtype), weight.to(dtype), grad_out.to(dtype)
        order = weight.shape[0]
        grad_x = torch.zeros_like(xf)
        grad_w = torch.empty(order, dtype=dtype, device=x.device)
        power_below = torch.ones_like(xf)  # x^(k-1)
        for k in range(1, order + 1):
            power = power_below * xf
            r = inv_rms[..., k - 1 : k]
            normed = power * r
            grad_w[order - k] = (g * normed).sum()
            a = g * w[order - k]  # gradient w.r.t. the normalized power
            grad_power = r * (a - normed * (a * normed).mean(-1, keepdim=True))
            grad_x.addcmul_(grad_power, power_below, value=float(k))
            power_below = power
        grad_b = g.sum().reshape(1)
        return grad_x.to(x.dtype), grad_w.to(weight.dtype), grad_b.to(weight.dtype), None


class _PolyReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        dtype = _compute_dtype(x)
        r, w = torch.relu(x.to(dtype)), weight.to(dtype)
        order = weight.shape[0]
        # Horner's rule: ((a0 r + a1) r + a2) r + b
        out = torch.zeros_like(r)
        for k in range(order):
            out = (out + w[k]) * r
        ctx.save_for_backward(x, weight)
        return (out + bias.to(dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        dtype = _compute_dtype(x)
        r, w, g = torch.relu(x.to(dtype)), weight.to(dtype), grad_out.to(dtype)
        order = weight.shape[0]
        grad_w = torch.empty(order, dtype=dtype, device=x.device)
        derivative = torch.zeros_like(r)
        power = torch.ones_like(r)  # r^(k-1)
        for k in range(1, order + 1):
            derivative = derivative + (k * w[order - k]) * power
            power = power * r
            grad_w[order - k] = (g * power).sum()
        grad_x = g * derivative * (x > 0)
        return grad_x.to(x.dtype), grad_w.to(weight.dtype), g.sum().reshape(1).to(weight.dtype)


class _PolyCom(nn.Module):
    """Shared parameters of the PolyCom activations: r coefficients (highest power first) and a bias."""

    # Parameters the optimizer must leave out of weight decay (read by polycom.train.optim).
    no_weight_decay_params = ("weight", "bias")

    def __init__(self, order: int = 3):
        super().__init__()
        if not MIN_ORDER <= order <= MAX_ORDER:
            raise ValueError(f"activation order must be in {MIN_ORDER}..{MAX_ORDER}, got {order}")
        self.order = order
        self.weight = nn.Parameter(torch.empty(order))
        self.bias = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0 / self.order)
            self.bias.zero_()

    def extra_repr(self) -> str:
        return f"order={self.order}"


class PolyNorm(_PolyCom):
    def __init__(self, order: int = 3, eps: float = 1e-6):
        super().__init__(order)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PolyNormFunction.apply(x, self.weight, self.bias, self.eps)


class PolyReLU(_PolyCom):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PolyReLUFunction.apply(x, self.weight, self.bias)


class ReLU2(nn.Module):
    """Squared ReLU (So et al., Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


@dataclass(frozen=True)
class ActivationSpec:
    """How an activation shapes its FFN.

    ``gated`` FFNs compute ``W2 (act(Wg x) * Wu x)`` with three matrices; the others ``W2 act(W1 x)``
    with two, so they get 1.5x the hidden width to match parameter counts.
    """

    name: str
    gated: bool
    build: Callable[[int], nn.Module]  # order -> elementwise activation module
    polycom: bool = False


ACTIVATIONS: dict[str, ActivationSpec] = {
    spec.name: spec
    for spec in (
        ActivationSpec("relu", gated=False, build=lambda order: nn.ReLU()),
        ActivationSpec("gelu", gated=False, build=lambda order: nn.GELU(approximate="none")),
        ActivationSpec("swiglu", gated=True, build=lambda order: nn.SiLU()),
        ActivationSpec("relu2", gated=False, build=lambda order: ReLU2()),
        ActivationSpec("polyrelu", gated=False, build=PolyReLU, polycom=True),
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


def polyrelu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    order = weight.shape[0]
    r = F.relu(x)
    return sum(weight[order - k] * r**k for k in range(1, order + 1)) + bias

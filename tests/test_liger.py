"""The Liger-Kernel PolyNorm path (``backend="liger"``, and ``"auto"`` on CUDA).

Liger's Triton kernel needs a GPU (it does not run under ``TRITON_INTERPRET=1``: it calls ``eps.to(tl.float32)``
on a Python float), so on CPU the path is exercised through ``LigerStandIn``: an autograd function with the
interface of ``liger_kernel.ops.poly_norm.LigerPolyNormFunction`` (liger-kernel 0.8.5) -- ``forward(ctx, X, W, B,
eps=1e-6, in_place=True)`` on 2-D ``X``, Liger's inverse-RMS layout (highest power first) and its closed-form
backward, written out in torch from the Triton kernels, returning the bias gradient 0-d as Liger does. The last
test compares the real kernel with our eager PolyNorm; it runs only where CUDA and liger-kernel are present
(``scripts/gpu_check.sh``).
"""

import pytest
import torch

from polycom.model import activations
from polycom.model.activations import PolyNorm, polynorm_reference

pytestmark = pytest.mark.usefixtures("one_thread")


class LigerStandIn(torch.autograd.Function):
    """``LigerPolyNormFunction`` re-implemented in torch: y = w0 norm(x^3) + w1 norm(x^2) + w2 norm(x) + b."""

    calls: list = []  # the ``in_place`` argument of every forward

    @staticmethod
    def forward(ctx, X, W, B, eps=1e-6, in_place=True):
        LigerStandIn.calls.append(in_place)
        assert X.dim() == 2 and W.shape == (3,) and B.numel() == 1
        x = X.to(torch.promote_types(X.dtype, torch.float32))
        powers = (x * x * x, x * x, x)  # Liger's order: x^3, x^2, x
        rstd = torch.stack([torch.rsqrt((p * p).sum(-1) / x.shape[-1] + eps) for p in powers], dim=-1)
        y = sum(W[i] * powers[i] * rstd[:, i : i + 1] for i in range(3)) + B
        ctx.in_place = in_place
        ctx.save_for_backward(X, W, rstd)
        return y.to(X.dtype)

    @staticmethod
    def backward(ctx, dY):
        X, W, rstd = ctx.saved_tensors
        n = X.shape[-1]
        dy, x = dY.to(rstd.dtype), X.to(rstd.dtype)
        dW, dX = [], 0
        for i, p in enumerate((3, 2, 1)):
            r = rstd[:, i : i + 1]
            s = (dy * x**p).sum(-1, keepdim=True)  # S_p
            # dL/dx from w_p norm(x^p): w_p [p x^(p-1) rstd_p dy - (p / n) x^(2p-1) rstd_p^3 S_p]
            dX = dX + W[i] * (p * x ** (p - 1) * r * dy - (p / n) * x ** (2 * p - 1) * r**3 * s)
            dW.append((r * s).sum())  # dL/dw_p = sum over rows of rstd_p S_p
        dX = dX.to(dY.dtype)
        if ctx.in_place:  # Liger writes dX into grad_output's storage
            dY.copy_(dX)
            dX = dY
        return dX, torch.stack(dW).to(W.dtype), dY.sum().to(W.dtype), None, None  # dB: 0-d, as Liger's _dB.sum()


@pytest.fixture
def stand_in(monkeypatch):
    """Liger's PolyNorm replaced by ``LigerStandIn``, and allowed on CPU inputs."""
    monkeypatch.setattr(activations, "_liger_polynorm_function", lambda: LigerStandIn)
    monkeypatch.setattr(activations, "_LIGER_DEVICE_TYPES", ("cuda", "cpu"))
    LigerStandIn.calls = []
    return LigerStandIn


def _module(eps=1e-6, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    m = PolyNorm(3, eps).to(dtype)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.7, -0.4, 1.3]))
        m.bias.fill_(0.25)
    return m


def _forward_backward(module, x, backend):
    module.backend = backend
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = module(x)
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    y.backward(g)
    return y, x.grad, module.weight.grad, module.bias.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stand_in_matches_our_polynorm_forward_and_backward(dtype):
    """The stand-in is Liger's math: it must equal our PolyNorm (the paper's formula) value for value."""
    m = _module(dtype=dtype)
    torch.manual_seed(1)
    x = torch.randn(37, 48, dtype=dtype) * 1.5
    y, gx, gw, gb = _forward_backward(m, x, "eager")
    xs = x.clone().requires_grad_()
    w = m.weight.detach().clone().requires_grad_()
    b = torch.tensor(0.25, dtype=dtype, requires_grad=True)  # Liger's bias: 0-d
    ys = LigerStandIn.apply(xs, w, b, m.eps, False)
    ys.backward(torch.linspace(-1, 1, ys.numel(), dtype=dtype).reshape(ys.shape))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ys, y, **tol)
    torch.testing.assert_close(xs.grad, gx, **tol)
    torch.testing.assert_close(w.grad, gw, **tol)
    assert b.grad.shape == () and gb.shape == (1,)
    torch.testing.assert_close(b.grad.reshape(1), gb, **tol)
    torch.testing.assert_close(ys, polynorm_reference(x, m.weight, m.bias, m.eps).detach(), **tol)


@pytest.mark.parametrize("backend", ["liger", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_liger_path_runs_backward_through_our_module(stand_in, backend, dtype):
    """Selected through the module (explicitly or by "auto"), Liger's function gets a 0-d view of our (1,) bias,
    so the 0-d bias gradient it returns is accepted (the old call passed the (1,) bias: "invalid gradient at
    index 2"), and forward/backward equal the eager path; in_place=False keeps the caller's grad_output."""
    m = _module()
    torch.manual_seed(2)
    x = (torch.randn(2, 9, 32) * 1.3).to(dtype)
    ref = _forward_backward(m, x, "eager")
    got = _forward_backward(m, x, backend)
    assert stand_in.calls == [False]
    assert got[3].shape == m.bias.shape == (1,)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, **tol)


def test_liger_path_trains_a_model(stand_in, make_tiny_model):
    """A whole model's loss backpropagates through the Liger path into every PolyNorm's coefficients."""
    model = make_tiny_model("polynorm").train()
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    grads = {}
    for backend in ("eager", "liger"):
        activations.set_activation_backend(model, backend)
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert len(stand_in.calls) == model.config.num_hidden_layers
    for name, g in grads["eager"].items():
        torch.testing.assert_close(grads["liger"][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_liger_backend_refuses_what_liger_cannot_run(stand_in):
    m = PolyNorm(order=2)
    m.backend = "liger"
    with pytest.raises(RuntimeError, match="order 3"):
        m(torch.randn(4, 8))
    assert PolyNorm(order=2)._resolved_backend(torch.randn(4, 8)) == "eager"  # auto: not order 3


@pytest.mark.skipif(not torch.cuda.is_available() or activations._liger_polynorm_function() is None,
                    reason="needs CUDA and liger-kernel (run by scripts/gpu_check.sh)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_liger_matches_eager_on_cuda(dtype):
    """The real Triton kernel against our eager PolyNorm: output, input, weight and bias gradients."""
    m = _module().cuda()
    torch.manual_seed(3)
    x = (torch.randn(4, 256, 1024, device="cuda") * 1.2).to(dtype)
    m.backend = "auto"
    assert m._resolved_backend(x) == "liger"  # what "auto" picks on CUDA with liger-kernel installed
    ref = _forward_backward(m, x, "eager")
    got = _forward_backward(m, x, "liger")
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for name, a, b in zip(("out", "x.grad", "weight.grad", "bias.grad"), got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        scale = b.abs().max().clamp(min=1)  # coefficient gradients are sums over 1M elements
        torch.testing.assert_close(a / scale, b / scale, **tol, msg=name)

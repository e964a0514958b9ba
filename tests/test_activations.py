"""Activations: every registry entry against an independent float64 reference, gradients, special cases,
half precision, the official parameter layout, memory kept for backward, and torch.compile."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polycom.model.activations import (
    ACTIVATIONS,
    BACKENDS,
    OfficialPolyNorm,
    MAX_ORDER,
    MIN_ORDER,
    PolyNorm,
    PolyReLU,
    ReLU2,
    _PolyCom,
    _PolyNormFunction,
    _PolyReLUFunction,
    get_activation,
    polynorm_reference,
    polyrelu_reference,
    set_activation_backend,
)

ORDERS = list(range(MIN_ORDER, MAX_ORDER + 1))


# ---- independent float64 references (written from the paper, not from polycom.model.activations) -----------------
def ref_polyrelu(x, a, b):
    """sum_{i=1..r} a_{r-i} relu(x)^i + b, a[0] multiplying the highest power."""
    r = x.clamp(min=0)
    order = len(a)
    return sum(a[order - i] * r**i for i in range(1, order + 1)) + b


def ref_polynorm(x, a, b, eps=1e-6):
    order = len(a)
    out = torch.full_like(x, float(b))
    for i in range(1, order + 1):
        p = x**i
        out += a[order - i] * p / torch.sqrt((p * p).mean(-1, keepdim=True) + eps)
    return out


REFERENCES = {
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "gelu": lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "swiglu": lambda x: x / (1.0 + torch.exp(-x)),  # the gate's activation (SiLU); the product is tested below
    "relu2": lambda x: torch.where(x > 0, x * x, torch.zeros_like(x)),
}


def _coeffs(module, seed):
    """Random coefficients (a, b) written into ``module``; returned as float64 Python lists."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.order, generator=g))
        module.bias.copy_(torch.randn(1, generator=g))
    return module.weight.detach().double().tolist(), float(module.bias.detach())


def _x(*shape, seed=0, scale=1.0, dtype=torch.float64):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)


# ---- registry vs float64 reference --------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if not ACTIVATIONS[n].polycom])
def test_plain_activation_matches_float64_reference(name):
    act = get_activation(name).build(3, 1e-6)
    x64 = _x(4, 8, 96, seed=1, scale=2.0)
    expected = REFERENCES[name](x64)
    torch.testing.assert_close(act(x64), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(act(x64.float()).double(), expected, rtol=1e-5, atol=1e-6)


def test_swiglu_ffn_matches_float64_reference():
    from polycom.model.config import PolyComConfig
    from polycom.model.layers import FeedForward

    cfg = PolyComConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=48, activation="swiglu")
    ffn = FeedForward(cfg).double()
    x = _x(2, 5, 32, seed=2)
    h = x @ ffn.up_proj.weight.T
    gate, up = h[..., :48], h[..., 48:]
    expected = (gate / (1.0 + torch.exp(-gate)) * up) @ ffn.down_proj.weight.T
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["eager", "reference"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", ["polyrelu", "polynorm"])
def test_polycom_matches_float64_reference(name, order, backend):
    act = get_activation(name).build(order, 1e-6)
    act.backend = backend
    ref = ref_polynorm if name == "polynorm" else ref_polyrelu
    x64 = _x(3, 7, 128, seed=order)
    # default coefficients (1/r each, b = 0), then random ones
    for seed in (None, 10 + order):
        if seed is not None:
            _coeffs(act, seed)
        a, b = act.weight.detach().double().tolist(), float(act.bias.detach())  # exact values of the parameters
        expected = ref(x64, a, b)
        torch.testing.assert_close(act.double()(x64), expected, rtol=1e-10, atol=1e-10)
        act.float()
        scale = expected.abs().max().item()
        torch.testing.assert_close(act(x64.float()).double(), expected, rtol=1e-5, atol=1e-5 * scale)


# ---- gradients -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU])
def test_gradcheck_input_and_coefficients(cls, order):
    """float64 gradcheck of the eager autograd functions w.r.t. the input, the coefficients and the bias."""
    x = _x(3, 2, 24, seed=order)
    if cls is PolyReLU:  # keep away from the kink at 0, where finite differences are not the derivative
        x = x + torch.sign(x) * 0.05
    x.requires_grad_()
    w = _x(order, seed=100 + order).requires_grad_()
    b = _x(1, seed=200 + order).requires_grad_()
    if cls is PolyNorm:
        fn = lambda x, w, b: _PolyNormFunction.apply(x, w, b, 1e-6, False)  # noqa: E731
    else:
        fn = lambda x, w, b: _PolyReLUFunction.apply(x, w, b, False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU])
def test_fast_equals_reference_fp32_forward_and_backward(cls, order):
    """The eager autograd functions against polynorm_reference / polyrelu_reference in fp32: output, input
    gradient and coefficient gradients within 1e-5 (relative to each tensor's largest magnitude)."""
    fast, ref = cls(order), cls(order)
    fast.backend, ref.backend = "eager", "reference"
    _coeffs(fast, seed=3 + order)
    ref.load_state_dict(fast.state_dict())
    x = _x(4, 32, 256, seed=5, dtype=torch.float32)
    g = _x(4, 32, 256, seed=6, dtype=torch.float32)
    results = []
    for m in (fast, ref):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(g)
        results.append((y.detach(), xi.grad, m.weight.grad, m.bias.grad))
    for got, want in zip(*results):
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


# ---- special cases -------------------------------------------------------------------------------------------
def test_polyrelu_reduces_to_relu_and_relu2():
    act = PolyReLU(3)
    x = _x(5, 64, seed=7, dtype=torch.float32)
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.0, 0.0, 1.0]))
        act.bias.zero_()
    torch.testing.assert_close(act(x), F.relu(x), rtol=0, atol=0)
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(act(x), ReLU2()(x), rtol=0, atol=0)


@pytest.mark.parametrize("order", ORDERS)
def test_polynorm_row_scale_invariance(order):
    """Scaling a row by c > 0 leaves its output unchanged: exactly (to rounding) with eps = 0, and up to the
    eps term with the default eps (mean(x^2k) >> 1e-6 for these rows)."""
    x = _x(6, 128, seed=8)
    scales = torch.tensor([0.3, 1.0, 2.5, 7.0, 0.9, 4.0], dtype=torch.float64).unsqueeze(-1)
    exact = PolyNorm(order, eps=0.0).double()
    _coeffs(exact, seed=order)
    torch.testing.assert_close(exact(x * scales), exact(x), rtol=1e-9, atol=1e-9)
    act = PolyNorm(order).double()
    act.load_state_dict(exact.state_dict())
    torch.testing.assert_close(act(x * scales), act(x), rtol=1e-4, atol=1e-4)
    act.float()
    torch.testing.assert_close(act((x * scales).float()), act(x.float()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU])
def test_half_precision_large_inputs_stay_finite(cls, dtype):
    """Magnitude ~100 in bf16/fp16: x^3 ~ 1e6 overflows fp16 (max 65504) unless computed in fp32.

    PolyReLU has no normalization: its *output* at r = 100 is ~3e5 with the default coefficients, which fp16
    cannot represent whatever the internals, so in fp16 it is checked with |x| in [25, 50]: the output
    (<= 50^3 / 3 + ... ~ 43,000) fits fp16 but r^3 (up to 125,000) does not, so a naive fp16 evaluation
    overflows while fp32 internals do not."""
    magnitude = 50.0 if (cls is PolyReLU and dtype == torch.float16) else 100.0
    act = cls(3)
    u = torch.rand(4, 64, generator=torch.Generator().manual_seed(10))
    x = (_x(4, 64, seed=9, dtype=torch.float32).sign() * magnitude * (0.5 + 0.5 * u)).to(dtype)
    x.requires_grad_()
    y = act(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    expected = act.double()(x.detach().double())
    act.float()
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(12)).to(dtype))  # unit-scale grads
    assert torch.isfinite(x.grad).all() and torch.isfinite(act.weight.grad).all() and torch.isfinite(act.bias.grad).all()


@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU])
def test_autocast_bf16_fp32_internals(cls):
    torch.manual_seed(0)
    proj = nn.Linear(32, 64, bias=False)
    with torch.no_grad():
        proj.weight.mul_(100.0)  # hidden values ~100
    act = cls(3)
    x = torch.randn(4, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = proj(x)
        y = act(h)
        loss = y.float().square().mean()
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    loss.backward()
    for t in (x.grad, proj.weight.grad, act.weight.grad, act.bias.grad):
        assert torch.isfinite(t).all()
    # same function as fp32 on the bf16 input, up to bf16 output rounding
    expected = act(h.detach().float())
    torch.testing.assert_close(y.float(), expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())


# ---- parameters ------------------------------------------------------------------------------------------------
def test_official_state_dict_loads_unchanged():
    official = OfficialPolyNorm()
    ours = PolyNorm(3)
    assert ours.state_dict().keys() == official.state_dict().keys()
    torch.testing.assert_close(ours.weight, official.weight)  # same initialisation
    torch.testing.assert_close(ours.bias, official.bias)
    with torch.no_grad():
        official.weight.copy_(torch.tensor([0.7, -0.2, 0.45]))
        official.bias.fill_(0.1)
    ours.load_state_dict(official.state_dict())
    x = _x(3, 9, 80, seed=11, dtype=torch.float32)
    torch.testing.assert_close(ours(x), official(x), rtol=1e-5, atol=1e-5)


def test_backend_selection():
    act = PolyNorm()
    assert act.backend == "auto" and "backend" not in act.state_dict()
    x = torch.randn(2, 16)
    for backend in ("eager", "reference"):
        act.backend = backend
        torch.testing.assert_close(act(x), PolyNorm()(x))
    act.backend = "nope"
    with pytest.raises(ValueError, match="backend"):
        act(x)
    act.backend = "liger"  # CPU input: Liger is CUDA-only
    with pytest.raises(RuntimeError, match="liger"):
        act(x)
    model = nn.Sequential(nn.Linear(4, 4), PolyReLU(), PolyNorm(2))
    assert set_activation_backend(model, "reference") == 2
    assert all(m.backend == "reference" for m in model.modules() if isinstance(m, _PolyCom))
    assert set(BACKENDS) >= {"auto", "eager", "compiled", "liger", "reference"}


# ---- memory kept for backward --------------------------------------------------------------------------------
def saved_bytes(fn, x) -> int:
    """Bytes of the tensors autograd keeps for backward while ``fn(x)`` runs, counted once per storage.
    Parameters are excluded (they live anyway)."""
    storages = {}
    params = set()

    def pack(t):
        if isinstance(t, nn.Parameter) or t.data_ptr() in params:
            return t
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    del out
    return sum(storages.values())


@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU])
def test_memory_saved_for_backward(cls):
    act = cls(3)
    x = torch.randn(8, 64, 512, requires_grad=True)
    hidden = x.numel() * x.element_size()
    ref_fn = polynorm_reference if cls is PolyNorm else polyrelu_reference
    ours = saved_bytes(act, x) / hidden
    naive = saved_bytes(lambda t: ref_fn(t, act.weight, act.bias), x) / hidden
    assert ours <= 1.05, ours  # target <= 2: the input (or relu(input)) plus one fp32 per row and power
    assert naive >= (5 if cls is PolyNorm else 3), naive  # the plain form keeps every power / normalized power


# ---- torch.compile -------------------------------------------------------------------------------------------
def _compile_case(cls, compile_model: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 48, bias=False), cls(3), nn.Linear(48, 16, bias=False))
    _coeffs(model[1], seed=21)
    eager = nn.Sequential(nn.Linear(16, 48, bias=False), cls(3), nn.Linear(48, 16, bias=False))
    eager.load_state_dict(model.state_dict())
    eager[1].backend = "eager"
    if compile_model:
        run = torch.compile(model, fullgraph=True)
    else:
        model[1].backend = "compiled"
        run = model
    x = torch.randn(4, 10, 16)
    out_c, out_e = run(x), eager(x)
    out_c.square().mean().backward()
    out_e.square().mean().backward()
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    for (name, p_c), p_e in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("cls, compile_model", [
    pytest.param(PolyNorm, True, id="PolyNorm-whole-model"),  # ~10 s warm inductor cache, ~20 s cold (loaded 2-core CPU)
    pytest.param(PolyNorm, False, id="PolyNorm-backend-compiled", marks=pytest.mark.slow),
    pytest.param(PolyReLU, True, id="PolyReLU-whole-model", marks=pytest.mark.slow),
    pytest.param(PolyReLU, False, id="PolyReLU-backend-compiled", marks=pytest.mark.slow),
])
def test_torch_compile_matches_eager(cls, compile_model):
    """torch.compile of a model holding the activation (Dynamo traces the autograd function's plain bodies, no
    graph break: fullgraph=True), and the "compiled" backend inside an eager model, both equal eager in forward
    and backward."""
    torch._dynamo.reset()
    _compile_case(cls, compile_model)

"""The C kernels behind the "eager" backend on CPU (polycom/model/cpu_kernels.py): forward and every gradient
against float64, odd shapes, thread-count independence, the one-OpenMP-runtime rule, the build cache, the
fallback when no compiler works, and that they are the code that actually runs."""

import os
import re
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from polycom.model import cpu_kernels
from polycom.model.activations import MAX_ORDER, MIN_ORDER, PolyNorm, PolyReLU, polynorm_reference, polyrelu_reference
from test_activations import saved_bytes

ORDERS = list(range(MIN_ORDER, MAX_ORDER + 1))
HAS_COMPILER = shutil.which(cpu_kernels._compiler()[0]) is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: the torch-op bodies run instead")


def _module(cls, order, seed):
    act = cls(order)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        act.weight.copy_(torch.randn(order, generator=g))
        act.bias.copy_(torch.randn(1, generator=g))
    return act


def _run(act, x, g):
    """(output, grad_x, grad_weight, grad_bias) of ``act`` at ``x`` against the output gradient ``g``."""
    x = x.detach().requires_grad_()
    y = act(x)
    grads = torch.autograd.grad(y, [x, act.weight, act.bias], g)
    return (y.detach(), *grads)


def _float64_reference(act, x, g):
    """The plain-autograd reference in float64 on a float64 copy of the module."""
    w = act.weight.detach().double().requires_grad_()
    b = act.bias.detach().double().requires_grad_()
    xd = x.detach().double().requires_grad_()
    y = polynorm_reference(xd, w, b, act.eps) if isinstance(act, PolyNorm) else polyrelu_reference(xd, w, b)
    return (y.detach(), *torch.autograd.grad(y, [xd, w, b], g.double()))


def _check(got, want):
    for name, a, b in zip(("output", "grad_x", "grad_weight", "grad_bias"), got, want):
        scale = max(b.abs().max().item(), 1.0) if b.numel() else 1.0
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=2e-5 * scale, msg=name)


def _inputs(shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale, torch.randn(shape, generator=g)


@needs_compiler
def test_kernels_build_here_and_share_torchs_openmp_runtime():
    assert cpu_kernels.available(), "a C compiler is installed but the kernels did not build (see the warning)"
    gomp = set(re.findall(r"\S*libgomp[^\s/]*\.so[^\s/]*", open("/proc/self/maps").read()))
    assert len(gomp) == 1, gomp  # our library reuses torch's libgomp.so.1: one OpenMP runtime and thread pool


@needs_compiler
@pytest.mark.parametrize("path", ["c", "torch-ops"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU])
@pytest.mark.parametrize("shape,scale", [((5, 7), 1.0), ((3, 4, 33), 1.0), ((6, 1056), 1.0), ((4, 65), 50.0),
                                         ((0, 33), 1.0), ((2, 0, 7), 1.0)],
                         ids=["7", "3d-33", "1056", "magnitude-50", "zero-rows", "3d-zero-rows"])
def test_forward_and_gradients_match_float64(cls, order, shape, scale, path, monkeypatch):
    """fp32 results of the C kernels (and of the torch-op bodies they replace) against float64: output, input,
    coefficient and bias gradients; magnitude 50 puts x^8 ~ 4e13 into PolyNorm's order-4 sums."""
    monkeypatch.setattr(cpu_kernels, "ENABLED", path == "c")
    act = _module(cls, order, seed=order)
    x, g = _inputs(shape, scale, seed=len(shape) + order)
    before = sum(cpu_kernels.calls.values())
    got = _run(act, x, g)
    assert sum(cpu_kernels.calls.values()) - before == (2 if path == "c" else 0)  # forward + backward kernels
    _check(got, _float64_reference(act, x, g))


@needs_compiler
@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU])
def test_non_contiguous_input(cls):
    act = _module(cls, 3, seed=1)
    x, g = _inputs((40, 24), seed=2)
    xt, gt = x.t(), g.t()  # (24, 40), rows strided
    assert not xt.is_contiguous()
    before = cpu_kernels.calls.copy()
    got = _run(act, xt, gt)
    assert cpu_kernels.calls - before  # the kernels ran (on a contiguous copy)
    _check(got, _float64_reference(act, xt, gt))


@needs_compiler
@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU])
def test_bitwise_identical_for_one_and_two_threads(cls):
    """Only per-row (per-block) work runs in parallel and the coefficient sums are serial, so the thread count
    cannot change a bit. 333 x 1056 is large enough for the kernels to go parallel, and splits unevenly."""
    act = _module(cls, 4, seed=3)
    x, g = _inputs((333, 1056), scale=2.0, seed=4)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_run(act, x, g))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU])
def test_saved_for_backward_unchanged(cls, dtype, monkeypatch):
    """What autograd keeps is the same with and without the C kernels: x (PolyNorm, plus a (rows, r) fp32
    inverse RMS) or relu(x) (PolyReLU), in the input's dtype -- bf16 inputs are upcast to compute, not to keep."""
    act = cls(3)
    x = torch.randn(8, 64, 512, dtype=dtype, requires_grad=True)
    kept = {}
    for enabled in (True, False):
        monkeypatch.setattr(cpu_kernels, "ENABLED", enabled)
        kept[enabled] = saved_bytes(act, x)
    extra = 8 * 64 * 3 * 4 if cls is PolyNorm else 0
    assert kept[True] == kept[False] == x.numel() * x.element_size() + extra, kept


@needs_compiler
def test_polyrelu_forward_in_c_backward_in_torch_ops(monkeypatch):
    """The C forward keeps x, not relu(x); a backward that runs the torch-op body (kernels switched off in
    between) must still get relu(x): with x itself, x = -1e25 gives 0 * P'(x) = 0 * inf = NaN in fp32."""
    act = _module(PolyReLU, 3, seed=7)
    x, g = _inputs((9, 40), seed=8)
    x[0, :5] = -1e25
    xi = x.clone().requires_grad_()
    y = act(xi)
    monkeypatch.setattr(cpu_kernels, "ENABLED", False)
    got = (y.detach(), *torch.autograd.grad(y, [xi, act.weight, act.bias], g))
    _check(got, _float64_reference(act, x, g))


@needs_compiler
def test_build_is_cached_and_keyed_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYCOM_CACHE_DIR", str(tmp_path))
    first = cpu_kernels._build()
    assert first.parent == tmp_path / "kernels" and first.exists()
    stamp = first.stat().st_mtime_ns
    assert cpu_kernels._build() == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    monkeypatch.setattr(cpu_kernels, "_cpu_flags", lambda: "flags : another cpu")
    other = cpu_kernels._build()
    assert other != first and other.exists()
    assert [p.name for p in (tmp_path / "kernels").iterdir() if not p.name.endswith(".so")] == []  # no leftovers


@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU])
def test_no_compiler_warns_once_and_falls_back(cls, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYCOM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "polycom-no-such-compiler")
    monkeypatch.setattr(cpu_kernels, "ENABLED", True)
    monkeypatch.setattr(cpu_kernels, "_lib", None)  # as in a fresh process
    act = _module(cls, 3, seed=5)
    x, g = _inputs((6, 40), seed=6)
    before = sum(cpu_kernels.calls.values())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = _run(act, x, g)
        again = _run(act, x, g)
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and "CPU kernels" in str(w.message)]
    assert len(ours) == 1 and "polycom-no-such-compiler" in str(ours[0].message), [str(w.message) for w in caught]
    assert sum(cpu_kernels.calls.values()) == before and not cpu_kernels.available()
    for a, b in zip(fallback, again):
        assert torch.equal(a, b)
    _check(fallback, _float64_reference(act, x, g))
    if HAS_COMPILER:  # and the same numbers as the C kernels, within fp32 rounding
        monkeypatch.setattr(cpu_kernels, "_lib", None)
        monkeypatch.delenv("CC")
        _check(_run(act, x, g), tuple(t.double() for t in fallback))
        assert sum(cpu_kernels.calls.values()) == before + 2


def test_environment_switch_turns_the_kernels_off():
    code = "from polycom.model import cpu_kernels; print(cpu_kernels.ENABLED, cpu_kernels.available())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "POLYCOM_CPU_KERNELS": "0"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out.stderr[-2000:]

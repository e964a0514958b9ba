"""Fused CPU kernels for PolyNorm and PolyReLU (fp32): plain C with OpenMP, compiled at first use, called
through ctypes on the tensors' data pointers. The ``"eager"`` backend uses them on CPU for fp32 compute.

Why: in eager PyTorch every elementwise op is one more pass over a hidden-sized tensor; these do the whole
forward or backward of a row while it sits in L1 -- PolyNorm: one loop for the row's sums of x^2..x^2r, one
writing the output by Horner's rule (backward: one loop for sum g x^k and sum g, one writing grad_x);
PolyReLU: one loop writing the output (backward: one loop recomputing relu(x), writing grad_x and summing
g r^k). What is kept for backward is no larger than with the torch-op bodies: PolyNorm x and a (rows, r)
inverse RMS; PolyReLU x instead of relu(x) (the same size; the forward then allocates and writes only its
output, as GELU's does).

Determinism: rows (PolyNorm) or fixed blocks of ``BLOCK`` elements (PolyReLU) are split between threads,
each row's/block's arithmetic is the same whoever runs it, and the coefficient gradients sum the per-row
partial sums serially (in double) after the parallel loop -- results are bitwise the same for any thread
count. Threads: ``torch.get_num_threads()``, in libgomp's pool that torch already runs (the library is
loaded after torch, so its ``libgomp.so.1`` resolves to torch's copy: one OpenMP runtime in the process).

Build: ``$CC`` (default ``cc``) with ``FLAGS`` into ``$POLYCOM_CACHE_DIR/kernels`` (default
``~/.cache/polycom/kernels``), the file named by a hash of the source, the compiler's ``--version``, the
flags and this CPU's flags line, so a cache shared between machines never runs a binary built for another
CPU; written to a temporary name and renamed (concurrent processes cannot see half a file). If the compiler
is missing or fails, one RuntimeWarning is issued and ``available()`` is false: the caller keeps its
torch-op bodies. ``POLYCOM_CPU_KERNELS=0`` (or ``ENABLED = False``) switches the kernels off; only Linux.

``calls`` counts the calls of each kernel (tests check the kernels are the ones that ran).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import Counter
from pathlib import Path

import torch

ENABLED = os.environ.get("POLYCOM_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared")
BLOCK = 4096  # PolyReLU elements per block (the unit of work and of partial sums)
calls: Counter = Counter()

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#define ROW static inline __attribute__((always_inline)) void
#define PAR _Pragma("omp parallel for schedule(static) num_threads(nt) if(nt > 1 && work >= 32768)")
/* order R is a literal at every call of a row function, so the tests on R fold away and each order gets its
   own vectorised loops; the reductions are "omp simd" (lane-wise partial sums, a fixed order per row). */

/* ---- PolyNorm: A_k = w[R-k] inv_k, inv_k = 1/sqrt(mean x^2k + eps), y = sum_k A_k x^k + b ---- */
ROW pn_fwd_row(const float *restrict x, float *restrict y, float *restrict inv, const float *restrict w,
               float b, float eps, int64_t h, const int R) {
    float s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f;
    #pragma omp simd reduction(+:s1,s2,s3,s4)
    for (int64_t j = 0; j < h; j++) {
        float x2 = x[j] * x[j], x4 = x2 * x2;
        s1 += x2;
        if (R >= 2) s2 += x4;
        if (R >= 3) s3 += x4 * x2;
        if (R >= 4) s4 += x4 * x4;
    }
    const float s[4] = {s1, s2, s3, s4};
    float a[4];
    for (int k = 0; k < R; k++) {
        inv[k] = (float)(1.0 / sqrt((double)s[k] / (double)h + (double)eps));
        a[k] = w[R - 1 - k] * inv[k];  /* A_{k+1} */
    }
    #pragma omp simd
    for (int64_t j = 0; j < h; j++) {
        float xj = x[j], acc = a[R - 1];
        for (int k = R - 2; k >= 0; k--) acc = acc * xj + a[k];
        y[j] = acc * xj + b;
    }
}

/* grad_x = g sum_k k A_k x^(k-1) - sum_k B_k x^(2k-1), B_k = k A_k inv_k^2 d_k / h, d_k = sum_j g_j x_j^k;
   part = (inv_k d_k for k = 1..R, sum_j g_j): this row's share of grad_w (lowest power first) and grad_b */
ROW pn_bwd_row(const float *restrict g, const float *restrict x, const float *restrict inv,
               const float *restrict w, float *restrict gx, float *restrict part, int64_t h, const int R) {
    float d1 = 0.f, d2 = 0.f, d3 = 0.f, d4 = 0.f, sg = 0.f;
    #pragma omp simd reduction(+:d1,d2,d3,d4,sg)
    for (int64_t j = 0; j < h; j++) {
        float gj = g[j], xj = x[j], t = gj * xj;
        sg += gj;
        d1 += t;
        if (R >= 2) { t *= xj; d2 += t; }
        if (R >= 3) { t *= xj; d3 += t; }
        if (R >= 4) { t *= xj; d4 += t; }
    }
    const float d[4] = {d1, d2, d3, d4};
    float ka[4], kb[4];
    for (int k = 0; k < R; k++) {
        ka[k] = (float)(k + 1) * (w[R - 1 - k] * inv[k]);
        kb[k] = (float)((double)ka[k] * inv[k] * inv[k] * d[k] / (double)h);
        part[k] = inv[k] * d[k];
    }
    part[R] = sg;
    #pragma omp simd
    for (int64_t j = 0; j < h; j++) {
        float xj = x[j], x2 = xj * xj, q = ka[R - 1], u = kb[R - 1];
        for (int k = R - 2; k >= 0; k--) { q = q * xj + ka[k]; u = u * x2 + kb[k]; }
        gx[j] = g[j] * q - u * xj;
    }
}

/* ---- PolyReLU: r = relu(x), y = ((w0 r + w1) r + ...) r + b over a block of n elements ---- */
ROW pr_fwd_block(const float *restrict x, float *restrict y, const float *restrict w, float b, int64_t n,
                 const int R) {
    #pragma omp simd
    for (int64_t j = 0; j < n; j++) {
        float rj = x[j] < 0.f ? 0.f : x[j], acc = w[0];  /* NaN stays NaN, like torch.relu */
        for (int k = 1; k < R; k++) acc = acc * rj + w[k];
        y[j] = acc * rj + b;
    }
}

/* v where mask is all ones, +0 where it is zero (two selects on one condition do not vectorise in gcc 12) */
static inline __attribute__((always_inline)) float masked(float v, int32_t mask) {
    union { float f; int32_t i; } u = {v};
    u.i &= mask;
    return u.f;
}

/* grad_x = g [x > 0] sum_k k a_k r^(k-1); part = (sum g [x > 0] r^k for k = 1..R, sum g). xr is x or relu(x):
   either gives the same r and mask */
ROW pr_bwd_block(const float *restrict g, const float *restrict xr, const float *restrict kw,
                 float *restrict gx, float *restrict part, int64_t n, const int R) {
    float s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f, sg = 0.f;
    #pragma omp simd reduction(+:s1,s2,s3,s4,sg)
    for (int64_t j = 0; j < n; j++) {
        const int32_t pos = -(int32_t)(xr[j] > 0.f);
        float gj = g[j], rj = masked(xr[j], pos), gm = masked(gj, pos), t = gm * rj, q = kw[0];
        sg += gj;
        s1 += t;
        if (R >= 2) { t *= rj; s2 += t; }
        if (R >= 3) { t *= rj; s3 += t; }
        if (R >= 4) { t *= rj; s4 += t; }
        for (int k = 1; k < R; k++) q = q * rj + kw[k];
        gx[j] = gm * q;
    }
    part[0] = s1; part[1] = s2; part[2] = s3; part[3] = s4;
    part[R] = sg;
}

#define BY_ORDER(R, CALL) switch (R) { case 1: CALL(1); break; case 2: CALL(2); break; \
                                       case 3: CALL(3); break; default: CALL(4); }

/* grad_w (highest power first) and grad_b from the (rows, R + 1) partial sums, serially in double */
static void finish(const float *part, int64_t rows, int R, float *gw, float *gb) {
    double acc[5] = {0, 0, 0, 0, 0};
    for (int64_t i = 0; i < rows; i++)
        for (int k = 0; k <= R; k++) acc[k] += part[i * (R + 1) + k];
    for (int k = 0; k < R; k++) gw[R - 1 - k] = (float)acc[k];
    *gb = (float)acc[R];
}

void polynorm_forward(const float *x, const float *w, const float *b, float eps, int64_t rows, int64_t h,
                      int R, float *y, float *inv, int nt) {
    const int64_t work = rows * h;
    const float bias = *b;
    PAR
    for (int64_t i = 0; i < rows; i++) {
#define CALL(O) pn_fwd_row(x + i * h, y + i * h, inv + i * R, w, bias, eps, h, O)
        BY_ORDER(R, CALL)
#undef CALL
    }
}

void polynorm_backward(const float *g, const float *x, const float *inv, const float *w, int64_t rows,
                       int64_t h, int R, float *gx, float *part, float *gw, float *gb, int nt) {
    const int64_t work = rows * h;
    PAR
    for (int64_t i = 0; i < rows; i++) {
#define CALL(O) pn_bwd_row(g + i * h, x + i * h, inv + i * R, w, gx + i * h, part + i * (R + 1), h, O)
        BY_ORDER(R, CALL)
#undef CALL
    }
    finish(part, rows, R, gw, gb);
}

void polyrelu_forward(const float *x, const float *w, const float *b, int64_t n, int64_t block, int R,
                      float *y, int nt) {
    const int64_t work = n, blocks = (n + block - 1) / block;
    const float bias = *b;
    PAR
    for (int64_t i = 0; i < blocks; i++) {
        const int64_t o = i * block, m = n - o < block ? n - o : block;
#define CALL(O) pr_fwd_block(x + o, y + o, w, bias, m, O)
        BY_ORDER(R, CALL)
#undef CALL
    }
}

void polyrelu_backward(const float *g, const float *xr, const float *w, int64_t n, int64_t block, int R,
                       float *gx, float *part, float *gw, float *gb, int nt) {
    const int64_t work = n, blocks = (n + block - 1) / block;
    float kw[4];
    for (int k = 0; k < R; k++) kw[k] = w[k] * (float)(R - k);  /* k a_k, highest power first */
    PAR
    for (int64_t i = 0; i < blocks; i++) {
        const int64_t o = i * block, m = n - o < block ? n - o : block;
        float p[5];
#define CALL(O) pr_bwd_block(g + o, xr + o, kw, gx + o, p, m, O)
        BY_ORDER(R, CALL)
#undef CALL
        for (int k = 0; k <= R; k++) part[i * (R + 1) + k] = p[k];
    }
    finish(part, blocks, R, gw, gb);
}
"""

_F, _I64, _I, _P = ctypes.c_float, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "polynorm_forward": (_P, _P, _P, _F, _I64, _I64, _I, _P, _P, _I),
    "polynorm_backward": (_P, _P, _P, _P, _I64, _I64, _I, _P, _P, _P, _P, _I),
    "polyrelu_forward": (_P, _P, _P, _I64, _I64, _I, _P, _I),
    "polyrelu_backward": (_P, _P, _P, _I64, _I64, _I, _P, _P, _P, _P, _I),
}
_lib = None  # the loaded library; False once building or loading failed
_lock = threading.Lock()


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


def cache_dir() -> Path:
    root = os.environ.get("POLYCOM_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "polycom") / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _build() -> Path:
    """The compiled library for this source, compiler, flags and CPU: from the cache, or built into it."""
    cc = _compiler()
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE, version, " ".join(FLAGS), _cpu_flags()]).encode()).hexdigest()[:20]
    folder = cache_dir()
    path = folder / f"polycom_cpu_kernels-{key}.so"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        src, out = Path(tmp) / "kernels.c", Path(tmp) / "kernels.so"
        src.write_text(SOURCE)
        result = subprocess.run([*cc, *FLAGS, str(src), "-o", str(out), "-lm"], capture_output=True, text=True,
                                timeout=300)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
            raise RuntimeError(f"{' '.join(cc)} exited with {result.returncode}: {(lines or [''])[0][:300]}")
        os.replace(out, path)  # atomic: other processes see no file or the whole one
    return path


def _load():
    global _lib
    with _lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL(str(_build()))  # after torch: libgomp.so.1 is torch's, already loaded
                for name, argtypes in _SIGNATURES.items():
                    fn = getattr(lib, name)
                    fn.argtypes, fn.restype = argtypes, None
                _lib = lib
            except Exception as exc:  # no compiler, compile error, unwritable cache, load error
                _lib = False
                warnings.warn(f"PolyCom CPU kernels unavailable, using the torch-op bodies "
                              f"({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=4)
    return _lib


def available() -> bool:
    """Whether the C kernels can run here (builds or loads them on the first call)."""
    if not ENABLED or not sys.platform.startswith("linux"):
        return False
    return bool(_lib if _lib is not None else _load())


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def polynorm_forward(x, w, b, eps: float):
    """(out, inv_rms (..., order)) as ``_polynorm_forward_eager``; all fp32 on CPU."""
    calls["polynorm_forward"] += 1
    x, w, b = x.contiguous(), w.contiguous(), b.contiguous()
    order, h = w.shape[0], x.shape[-1]
    out = torch.empty_like(x)
    inv = x.new_empty((*x.shape[:-1], order))
    _lib.polynorm_forward(_ptr(x), _ptr(w), _ptr(b), eps, x.numel() // h, h, order, _ptr(out), _ptr(inv),
                          torch.get_num_threads())
    return out, inv


def polynorm_backward(g, x, w, inv_rms):
    """(grad_x, grad_w, grad_b) as ``_polynorm_backward_eager``."""
    calls["polynorm_backward"] += 1
    g, x, w, inv_rms = g.contiguous(), x.contiguous(), w.contiguous(), inv_rms.contiguous()
    order, h = w.shape[0], x.shape[-1]
    rows = x.numel() // h
    grad_x, grad_w, grad_b = torch.empty_like(x), w.new_empty(order), w.new_empty(1)
    part = x.new_empty((rows, order + 1))
    _lib.polynorm_backward(_ptr(g), _ptr(x), _ptr(inv_rms), _ptr(w), rows, h, order, _ptr(grad_x), _ptr(part),
                           _ptr(grad_w), _ptr(grad_b), torch.get_num_threads())
    return grad_x, grad_w, grad_b


def polyrelu_forward(x, w, b):
    """The output only: backward takes x itself (relu(x) is recomputed on the fly), so nothing else is written."""
    calls["polyrelu_forward"] += 1
    x, w, b = x.contiguous(), w.contiguous(), b.contiguous()
    out = torch.empty_like(x)
    _lib.polyrelu_forward(_ptr(x), _ptr(w), _ptr(b), x.numel(), BLOCK, w.shape[0], _ptr(out),
                          torch.get_num_threads())
    return out


def polyrelu_backward(g, r, w):
    """(grad_x, grad_w, grad_b) as ``_polyrelu_backward_eager``; r = relu(x), or x itself (same results)."""
    calls["polyrelu_backward"] += 1
    g, r, w = g.contiguous(), r.contiguous(), w.contiguous()
    order, n = w.shape[0], r.numel()
    grad_x, grad_w, grad_b = torch.empty_like(r), w.new_empty(order), w.new_empty(1)
    part = r.new_empty((-(-n // BLOCK), order + 1))
    _lib.polyrelu_backward(_ptr(g), _ptr(r), _ptr(w), n, BLOCK, order, _ptr(grad_x), _ptr(part), _ptr(grad_w),
                           _ptr(grad_b), torch.get_num_threads())
    return grad_x, grad_w, grad_b

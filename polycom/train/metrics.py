"""Device peak FLOP/s and model FLOPs utilisation (MFU); the model's FLOPs per token are in ``polycom.model.stats``.

MFU = achieved model FLOP/s / peak FLOP/s, with the model FLOPs of PaLM (Chowdhery et al. 2022, appendix B):
only the FLOPs the model needs (no rematerialisation, no elementwise work), against the dense peak of the
device. On CPU the peak is *measured* (a large fp32 matmul, cached per machine); on CUDA it is looked up in
a table of datasheet dense tensor-core peaks (bf16; fp16 for GPUs without bf16).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import time
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PEAK_FLOPS_ENV = "POLYCOM_PEAK_FLOPS"  # overrides every lookup and measurement (FLOP/s, e.g. 1.35e11)
CACHE_ENV = "POLYCOM_CACHE_DIR"
_CACHE_FILE = "peak_flops.json"


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float:
    """Model FLOPs utilisation in [0, 1]: ``tokens_per_s * flops_per_token / peak`` (peak in FLOP/s, summed over
    the devices that produced ``tokens_per_s``). NaN when the peak is unknown or not positive."""
    if not peak or peak <= 0 or not math.isfinite(peak):
        return float("nan")
    return tokens_per_s * flops_per_token / peak


# ---- CUDA: datasheet table -------------------------------------------------------------------------------------
# Dense (no 2:4 sparsity) tensor-core peak, bf16 inputs with fp32 accumulation; fp16 where the GPU has no bf16
# (V100, T4). Matched against torch.cuda.get_device_name() in this order (first match wins), so the more
# specific patterns come first.
CUDA_PEAK_FLOPS: tuple[tuple[str, float, str], ...] = (
    (r"\bGH200\b", 989e12, "GH200 (H100 SXM compute)"),
    (r"\bH200\b", 989e12, "H200 SXM"),
    (r"\bH100\b.*\bPCIe\b", 756e12, "H100 PCIe"),
    (r"\bH100\b.*\bNVL\b", 835e12, "H100 NVL"),
    (r"\bH100\b", 989e12, "H100 SXM (e.g. 'NVIDIA H100 80GB HBM3')"),
    (r"\bH800\b.*\bPCIe\b", 756e12, "H800 PCIe"),
    (r"\bH800\b", 989e12, "H800 SXM"),
    (r"\bB200\b", 2250e12, "B200"),
    (r"\bA100\b", 312e12, "A100 (SXM and PCIe)"),
    (r"\bA800\b", 312e12, "A800"),
    (r"\bA10G\b", 70e12, "A10G (AWS; not the A10's 125)"),
    (r"\bA10\b", 125e12, "A10"),
    (r"\bA40\b", 149.7e12, "A40"),
    (r"\bA30\b", 165e12, "A30"),
    (r"RTX A6000", 154.8e12, "RTX A6000"),
    (r"\bL40S\b", 362e12, "L40S"),
    (r"\bL40\b", 181e12, "L40"),
    (r"\bL4\b", 121e12, "L4"),
    (r"RTX 4090", 165.2e12, "GeForce RTX 4090 (fp32 accumulate)"),
    (r"RTX 3090", 71e12, "GeForce RTX 3090 (fp32 accumulate)"),
    (r"\bV100\b", 125e12, "V100 SXM2, fp16 (no bf16)"),
    (r"\bT4\b", 65e12, "T4, fp16 (no bf16)"),
)


def cuda_peak_flops_by_name(name: str) -> float | None:
    """Dense bf16 (fp16 for V100/T4) tensor-core peak for a CUDA device name, or None if unknown."""
    for pattern, peak, _ in CUDA_PEAK_FLOPS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return peak
    return None


# ---- CPU: measured peak ----------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "polycom")
    return Path(root) / _CACHE_FILE


def _cache_key(size: int, threads: int) -> str:
    return f"{platform.node()}|{cpu_model()}|cpus={os.cpu_count()}|torch={torch.__version__}|threads={threads}|n={size}"


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def measure_cpu_peak_flops(size: int = 2048, repeats: int = 5, *, use_cache: bool = True,
                           refresh: bool = False) -> float:
    """Peak fp32 FLOP/s of this CPU with torch's current thread count: the best of ``repeats`` timings of an
    ``size x size`` fp32 matmul (``2·size³`` FLOPs each), after one warm-up.

    The value is cached in ``$POLYCOM_CACHE_DIR/peak_flops.json`` (default ``~/.cache/polycom``), keyed by host
    name, CPU model, CPU count, torch version, thread count and size. A measurement taken while other jobs share
    the cores is too low; ``refresh=True`` measures again and keeps the larger of the old and new values (a peak
    can only be underestimated by noise). The entry also records the load average at measurement time.
    ``$POLYCOM_PEAK_FLOPS`` overrides everything.
    """
    override = os.environ.get(PEAK_FLOPS_ENV)
    if override:
        return float(override)
    threads = torch.get_num_threads()
    path, key = _cache_path(), _cache_key(size, threads)
    cache = _read_cache(path) if use_cache else {}
    if use_cache and not refresh and key in cache:
        return float(cache[key]["flops"])

    a = torch.randn(size, size, dtype=torch.float32)
    b = torch.randn(size, size, dtype=torch.float32)
    c = torch.empty(size, size, dtype=torch.float32)
    torch.mm(a, b, out=c)  # warm-up: thread pool, BLAS buffers
    best = math.inf
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - start)
    flops = 2.0 * size**3 / best
    if use_cache:
        old = float(cache.get(key, {}).get("flops", 0.0))
        flops = max(flops, old)
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        cache[key] = {"flops": flops, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg": load,
                      "size": size, "threads": threads}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:  # read-only home: still return the measurement
            log.warning("could not cache the CPU peak in %s: %s", path, exc)
    return flops


def device_peak_flops(device) -> float | None:
    """Peak FLOP/s of one device, for MFU: CUDA from the datasheet table (None, with a warning, for a GPU not in
    it), CPU measured (``measure_cpu_peak_flops``, cached); ``$POLYCOM_PEAK_FLOPS`` overrides both. Other device
    types: None."""
    override = os.environ.get(PEAK_FLOPS_ENV)
    if override:
        return float(override)
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = cuda_peak_flops_by_name(name)
        if peak is None:
            warnings.warn(f"unknown GPU {name!r}: no peak FLOP/s, MFU will not be reported "
                          f"(set {PEAK_FLOPS_ENV} to give one)", RuntimeWarning, stacklevel=2)
        return peak
    if device.type == "cpu":
        return measure_cpu_peak_flops()
    return None

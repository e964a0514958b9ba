"""FLOPs per token, MFU arithmetic, the CPU peak measurement and its cache, the CUDA peak table."""

import json
import math
import time

import pytest
import torch

from polycom.model.stats import count_parameters, flops_per_token, model_flops_per_token
from polycom.train import metrics
from polycom.train.metrics import cuda_peak_flops_by_name, device_peak_flops, measure_cpu_peak_flops, mfu


def test_flops_per_token_hand_computed():
    # N = 1,000,000, L = 2, d = 64, T = 128: 6e6 + 12 * 2 * 64 * 128 = 6,000,000 + 196,608
    assert model_flops_per_token(1_000_000, 2, 64, 128) == 6_196_608.0
    # the study size: d 256, 4 layers, vocab 8192, untied, GELU width 1056 -> N = 4 layers x (attention 4d^2 +
    # FFN 2 d h + 2 norm gains) + final norm + head (d x vocab)
    d, h, L, V, T = 256, 1056, 4, 8192, 256
    n = L * (4 * d * d + 2 * d * h + 2 * d) + d + d * V
    assert model_flops_per_token(n, L, d, T) == 6 * n + 12 * L * d * T


def test_matmul_parameters_exclude_the_input_embedding_only(make_tiny_model):
    model = make_tiny_model("gelu", tie_word_embeddings=False)
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    assert count_parameters(model).matmul == total - embed  # the LM head stays in: it is a matmul
    assert flops_per_token(model, 128) == model_flops_per_token(total - embed, 2, 64, 128)
    tied = make_tiny_model("gelu", tie_word_embeddings=True)
    assert count_parameters(tied).matmul == sum(p.numel() for p in tied.parameters())  # shared matrix counted once


def test_mfu_arithmetic():
    assert mfu(1000.0, 6e7, 1.2e11) == pytest.approx(0.5)
    assert mfu(2_200, 35e6, 135e9) == pytest.approx(2_200 * 35e6 / 135e9)
    assert math.isnan(mfu(1000.0, 6e7, None)) and math.isnan(mfu(1000.0, 6e7, 0.0))


def test_cpu_peak_measurement_is_fast_positive_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYCOM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("POLYCOM_PEAK_FLOPS", raising=False)
    start = time.perf_counter()
    peak = measure_cpu_peak_flops(size=256, repeats=3)
    assert time.perf_counter() - start < 10
    assert math.isfinite(peak) and peak > 1e8  # any CPU does > 0.1 GFLOP/s on a 256^3 fp32 matmul
    cache = json.loads((tmp_path / "peak_flops.json").read_text())
    (entry,) = cache.values()
    assert entry["flops"] == peak and entry["threads"] == torch.get_num_threads() and entry["size"] == 256
    # cached: returned without measuring (a bogus cached value proves it)
    key = next(iter(cache))
    cache[key]["flops"] = 123.0
    (tmp_path / "peak_flops.json").write_text(json.dumps(cache))
    assert measure_cpu_peak_flops(size=256) == 123.0
    # refresh keeps the larger of old and new
    assert measure_cpu_peak_flops(size=256, repeats=1, refresh=True) > 123.0
    # device_peak_flops on CPU uses the (default-size) measurement; the env variable overrides everything
    monkeypatch.setenv("POLYCOM_PEAK_FLOPS", "1.5e11")
    assert device_peak_flops("cpu") == 1.5e11 and measure_cpu_peak_flops() == 1.5e11


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA A10G", 70e12),
    ("NVIDIA A10", 125e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA GeForce RTX 4090", 165.2e12),
    ("Tesla V100-SXM2-16GB", 125e12),
    ("Tesla T4", 65e12),
])
def test_cuda_table_lookup(name, peak):
    assert cuda_peak_flops_by_name(name) == peak


def test_unknown_gpu_is_none_with_warning(monkeypatch):
    monkeypatch.delenv("POLYCOM_PEAK_FLOPS", raising=False)
    assert cuda_peak_flops_by_name("Some Future GPU 9000") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU 9000")
    with pytest.warns(RuntimeWarning, match="unknown GPU"):
        assert device_peak_flops(torch.device("cuda", 0)) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_peak_flops(torch.device("cuda", 0)) == 989e12
    assert metrics.device_peak_flops("meta") is None

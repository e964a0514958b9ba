"""scripts/benchmark.py end to end on a tiny model: what its report says about equal sizes and saved memory."""

import pytest

from scripts_loader import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark")


def test_unknown_activation_is_refused_before_any_model_is_built(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--activations", "gelu,polynom"])
    assert "unknown activation 'polynom'" in capsys.readouterr().err


def test_tiny_benchmark_report(bench, monkeypatch):
    monkeypatch.setenv("POLYCOM_PEAK_FLOPS", "1e11")  # no peak measurement in a test
    report = bench.main(["--model-size", "tiny", "--vocab", "256", "--seq-len", "32", "--micro-batch", "2",
                         "--steps", "2", "--warmup", "1", "--activations", "gelu,swiglu,polynorm",
                         "--no-references", "--no-write"])
    acts = report["activations"]
    assert list(acts) == ["gelu", "swiglu", "polynorm"]
    # the comparison is at equal parameter count: PolyNorm adds only its 3 weights and bias in each of 2 layers
    assert acts["swiglu"]["num_params"] == acts["gelu"]["num_params"]
    assert acts["polynorm"]["num_params"] - acts["gelu"]["num_params"] == 2 * 4
    assert report["ratios"]["step_vs_gelu"]["gelu"] == 1.0
    assert report["ratios"]["step_vs_gelu"]["polynorm"] == pytest.approx(
        acts["polynorm"]["step_ms"] / acts["gelu"]["step_ms"])
    # saved-for-backward in units of one fp32 hidden tensor: GELU keeps its input, PolyNorm no more than that
    # (its per-row norm statistics aside), SwiGLU its fused [gate|up] output (2 x 128 wide against the other
    # activations' 192) and silu(gate) (128)
    assert acts["gelu"]["saved_hidden_tensors"] == pytest.approx(1.0)
    assert 1.0 <= acts["polynorm"]["saved_hidden_tensors"] < 1.05
    assert acts["swiglu"]["saved_hidden_tensors"] == pytest.approx((256 + 128) / 192)
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in acts.values())

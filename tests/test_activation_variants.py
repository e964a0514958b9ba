"""The gated PolyNorm variants of the registry: gated PolyNorm (Motif) and PNGLU (swiss-ai Megatron), against float64
references written from their sources' formulas, parameter matching, init, weight decay and config checks."""

import pytest
import torch

from polycom.model.activations import ACTIVATIONS, PNGLU, GatedPolyNorm, PolyNorm, get_activation
from polycom.model.config import PolyComConfig, check_schema
from polycom.model.layers import FeedForward


def _x(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def rms_normed(v: torch.Tensor, eps: float) -> torch.Tensor:
    return v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps)


def polynorm64(x, a, b, eps):
    """Zhuo et al.: sum_i a_{r-i} N(x^i) + b, a[0] multiplying the highest power."""
    r = len(a)
    return sum(a[r - i] * rms_normed(x**i, eps) for i in range(1, r + 1)) + b


def pnglu_gate64(x, alphas, eps):
    """swiss-ai Megatron ``compiled_polynorm``: |alpha_1| N(x) + |alpha_2| N(x*x) (+ |alpha_3| N(x*x*x)); ``alphas``
    = [alpha_1, alpha_2, (alpha_3)], i.e. the reverse of the module's weight layout."""
    return sum(abs(a) * rms_normed(x**i, eps) for i, a in enumerate(alphas, start=1))


def tiny_config(activation, order=3, **kwargs):
    return PolyComConfig.matched(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 intermediate_size=48, activation=activation, activation_order=order, **kwargs)


def test_registry_entries_are_gated_polycom_and_accept_their_orders():
    for name in ("gated_polynorm", "pnglu"):
        spec = get_activation(name)
        assert spec.gated and spec.polycom
    assert ACTIVATIONS["pnglu"].orders == PNGLU.ORDERS == (2, 3)
    assert isinstance(get_activation("gated_polynorm").build(3, 1e-6), PolyNorm)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_gated_polynorm_ffn_matches_float64_reference(order):
    ffn = FeedForward(tiny_config("gated_polynorm", order)).double()
    with torch.no_grad():  # coefficients away from their init (1/r, 0)
        ffn.act.weight.copy_(torch.randn(order, generator=torch.Generator().manual_seed(order), dtype=torch.float64))
        ffn.act.bias.fill_(0.3)
    x = _x(2, 5, 32, seed=order)
    h = x @ ffn.up_proj.weight.T
    gate, up = h[..., :48], h[..., 48:]
    a, b = ffn.act.weight.detach().tolist(), ffn.act.bias.item()
    expected = (polynorm64(gate, a, b, 1e-6) * up) @ ffn.down_proj.weight.T
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)
    assert ffn.up_proj.weight.shape == (2 * 48, 32)  # SwiGLU's width: a gate and an up half of 48 each


@pytest.mark.parametrize("order", [2, 3])
def test_pnglu_ffn_matches_float64_reference(order):
    ffn = FeedForward(tiny_config("pnglu", order)).double()
    with torch.no_grad():  # one negative coefficient: the gate must use its absolute value
        ffn.act.weight.copy_(torch.tensor([-0.7, 0.4, 1.3][:order], dtype=torch.float64))
    x = _x(3, 4, 32, seed=10 + order, scale=2.0)
    h = x @ ffn.up_proj.weight.T
    gate, up = h[..., :48], h[..., 48:]
    alphas = list(reversed(ffn.act.weight.detach().tolist()))  # module layout: highest power first
    expected = (pnglu_gate64(gate, alphas, 1e-6) * up) @ ffn.down_proj.weight.T
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_pnglu_in_lower_precision_is_close_to_float64_and_keeps_the_dtype(dtype, tol):
    act = PNGLU(2)
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.9, -0.35]))
    x64 = _x(4, 96, seed=3, scale=3.0)
    expected = pnglu_gate64(x64, [-0.35, 0.9], 1e-6)
    out = act(x64.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


def test_pnglu_gradients_match_float64_finite_differences():
    act = PNGLU(3).double()
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.5, -0.2, 0.8], dtype=torch.float64))
    x = _x(3, 16, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(act, (x,))


def test_init_and_weight_decay_follow_the_sources(make_tiny_model):
    from polycom.train.optim import no_decay_parameter_names

    pnglu = make_tiny_model("pnglu", activation_order=2)
    act = pnglu.model.layers[0].mlp.act
    assert isinstance(act, PNGLU) and torch.equal(act.weight.detach(), torch.full((2,), 0.2))
    assert "model.layers.0.mlp.act.weight" in no_decay_parameter_names(pnglu, embedding_weight_decay=False)
    assert act.log_values() == pytest.approx({"a0": 0.2, "a1": 0.2})
    gated = make_tiny_model("gated_polynorm").model.layers[0].mlp.act
    assert isinstance(gated, GatedPolyNorm)
    assert torch.allclose(gated.weight, torch.full((3,), 1 / 3)) and gated.bias.item() == 0.0


@pytest.mark.parametrize("activation", ["gated_polynorm", "pnglu"])
def test_parameter_count_matches_swiglu(activation):
    from polycom.model import PolyComForCausalLM

    def count(name, order):
        cfg = PolyComConfig.matched(vocab_size=512, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                    intermediate_size=352, activation=name, activation_order=order)
        with torch.device("meta"):
            return cfg.intermediate_size, sum(p.numel() for p in PolyComForCausalLM(cfg).parameters())

    order = 2 if activation == "pnglu" else 3
    width, n = count(activation, order)
    swiglu_width, swiglu_n = count("swiglu", 3)
    coefficients = 4 * (order if activation == "pnglu" else order + 1)  # per layer: a_i (and PolyNorm's b)
    assert width == swiglu_width == 352 and n == swiglu_n + coefficients


def test_an_order_the_activation_lacks_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"activation.order=4 is not an order of pnglu; valid: \(2, 3\)"):
        check_schema({"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
                      "max_position_embeddings": 32, "num_experts": 0, "ffn_width_multiple": 16},
                     {"name": "pnglu", "order": 4, "eps": 1e-6})
    with pytest.raises(ValueError, match="pnglu's order"):
        PNGLU(1)

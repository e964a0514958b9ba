"""The dropless top-k MoE FFN: equality with a dense FFN and with a per-token reference (outputs and gradients),
the auxiliary losses by hand, routing bookkeeping, training, HF round-trip and parameter counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from polycom.model.activations import ACTIVATIONS, polynorm_reference, polyrelu_reference
from polycom.model import PolyComConfig, PolyComForCausalLM
from polycom.model.layers import FeedForward
from polycom.model.moe import (
    MoEFeedForward,
    expert_load,
    load_balance_loss,
    route,
    router_z_loss,
)
from polycom.model.stats import count_parameters
from polycom.train import build
from polycom.train.config import register_schema
from polycom.train.optim import no_decay_parameter_names

register_schema()


def moe_config(activation="polynorm", **overrides) -> PolyComConfig:
    kwargs = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, activation=activation,
                  num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, ffn_width_multiple=8)
    kwargs.update(overrides)
    return PolyComConfig.matched(**kwargs)


def randomize_coefficients(module: torch.nn.Module) -> None:
    """Move every PolyCom coefficient away from its init so using the wrong set of coefficients shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("act"):
                p.copy_(torch.randn_like(p))


def reference_activation(name: str, h: torch.Tensor, act: torch.nn.Module) -> torch.Tensor:
    """The activation of one token's expert hidden vector, written plainly (not through the custom kernels)."""
    if name == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if name == "gated_polynorm":
        gate, up = h.chunk(2, dim=-1)
        return polynorm_reference(gate, act.weight, act.bias, act.eps) * up
    if name == "pnglu":
        gate, up = h.chunk(2, dim=-1)
        norm = [gate**k * torch.rsqrt((gate**k).pow(2).mean(-1, keepdim=True) + act.eps) for k in (1, 2, 3)]
        return sum(act.weight[act.order - k].abs() * norm[k - 1] for k in range(1, act.order + 1)) * up
    if name == "polynorm":
        return polynorm_reference(h, act.weight, act.bias, act.eps)
    if name == "polyrelu":
        return polyrelu_reference(h, act.weight, act.bias)
    return {"relu": F.relu, "gelu": F.gelu, "relu2": lambda v: F.relu(v) ** 2}[name](h)


def reference_moe(moe: MoEFeedForward, x: torch.Tensor, activation: str):
    """Slow per-token MoE: route each token on its own, run each of its k experts on that single token.
    Returns the output and both aux losses computed with explicit loops."""
    tokens, d = x.shape
    num_experts, k = moe.num_experts, moe.top_k
    logits = x @ moe.router.weight.T
    probs = logits.softmax(-1)
    rows, counts = [], [0] * num_experts
    for t in range(tokens):
        weights, experts = probs[t].topk(k)
        if moe.norm_topk_prob:
            weights = weights / weights.sum()
        y = torch.zeros(d, dtype=x.dtype)
        for w, e in zip(weights, experts.tolist()):
            counts[e] += 1
            act = moe.act[e] if moe.per_expert_act else moe.act
            h = reference_activation(activation, x[t] @ moe.up_proj[e], act)
            y = y + w * (h @ moe.down_proj[e])
        rows.append(y)
    lb = sum(num_experts * counts[i] / (tokens * k) * probs[:, i].mean() for i in range(num_experts))
    z = sum(torch.log(torch.exp(logits[t]).sum()) ** 2 for t in range(tokens)) / tokens
    return torch.stack(rows), lb, z


@pytest.mark.parametrize("activation", ["swiglu", "gelu", "polynorm"])
@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_single_expert_top1_equals_dense_ffn(activation, norm_topk_prob):
    torch.manual_seed(0)
    cfg = moe_config(activation, num_experts=1, num_experts_per_tok=1, norm_topk_prob=norm_topk_prob,
                     intermediate_size=16)
    dense, moe = FeedForward(cfg).double(), MoEFeedForward(cfg).double()
    assert moe.expert_hidden_size == cfg.intermediate_size
    randomize_coefficients(dense)
    with torch.no_grad():
        moe.up_proj[0].copy_(dense.up_proj.weight.T)
        moe.down_proj[0].copy_(dense.down_proj.weight.T)
        for p_moe, p_dense in zip(moe.act.parameters(), dense.act.parameters()):
            p_moe.copy_(p_dense)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out_dense, out_moe = dense(x), moe(x2).hidden_states
    torch.testing.assert_close(out_moe, out_dense)
    grad = torch.randn_like(out_dense)
    out_dense.backward(grad)
    out_moe.backward(grad)
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(moe.up_proj.grad[0], dense.up_proj.weight.grad.T)
    torch.testing.assert_close(moe.down_proj.grad[0], dense.down_proj.weight.grad.T)


CASES = [(a, norm, True) for a in ACTIVATIONS for norm in (False, True)] + [
    ("polynorm", False, False), ("polynorm", True, False), ("polyrelu", False, False)]


BACKENDS = [("loop", torch.float64)] + ([("grouped_mm", torch.float32)] if hasattr(F, "grouped_mm") else [])


@pytest.mark.parametrize("backend,dtype", BACKENDS)
@pytest.mark.parametrize("activation,norm_topk_prob,shared", CASES)
def test_matches_per_token_reference_with_gradients(activation, norm_topk_prob, shared, backend, dtype):
    torch.manual_seed(1)
    cfg = moe_config(activation, norm_topk_prob=norm_topk_prob, moe_shared_coefficients=shared)
    moe = MoEFeedForward(cfg).to(dtype)
    moe.expert_backend = backend
    with torch.no_grad():
        moe.router.weight.normal_(0, 0.5)  # a peaked router, so the top-k and the aux losses matter
    randomize_coefficients(moe)
    assert moe.per_expert_act == (not shared)
    x = torch.randn(2, 7, 16, dtype=dtype)
    grad = torch.randn(2, 7, 16, dtype=dtype)
    tol = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)

    def run(fn):
        moe.zero_grad()
        xi = x.clone().requires_grad_()
        out, lb, z = fn(xi)
        ((out * grad).sum() + lb + z).backward()
        grads = {name: p.grad.clone() for name, p in moe.named_parameters()}
        return out.detach(), lb.detach(), z.detach(), xi.grad, grads

    def fast(xi):
        o = moe(xi)
        return o.hidden_states, o.load_balance_loss, o.router_z_loss

    def slow(xi):
        out, lb, z = reference_moe(moe, xi.reshape(-1, 16), activation)
        return out.view(2, 7, 16), lb, z

    out, lb, z, gx, grads = run(fast)
    out_ref, lb_ref, z_ref, gx_ref, grads_ref = run(slow)
    torch.testing.assert_close(out, out_ref, **tol)
    torch.testing.assert_close(lb, lb_ref.to(lb.dtype), **tol)
    torch.testing.assert_close(z, z_ref.to(z.dtype), **tol)
    torch.testing.assert_close(gx, gx_ref, **tol)
    assert grads.keys() == grads_ref.keys() and "router.weight" in grads
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], msg=name, **tol)
    assert grads["router.weight"].abs().sum() > 0


def test_load_balance_loss_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4], [0.2, 0.2, 0.6]])
    experts = torch.tensor([[0, 1], [1, 2], [0, 2], [2, 0]])
    # slots per expert: 0 -> 3, 1 -> 2, 2 -> 3 of 8; mean probs 0.375, 0.275, 0.35
    expected = 3 * (3 / 8 * 0.375 + 2 / 8 * 0.275 + 3 / 8 * 0.35)
    assert load_balance_loss(probs, experts).item() == pytest.approx(expected)
    torch.testing.assert_close(expert_load(experts, 3), torch.tensor([3 / 8, 2 / 8, 3 / 8]))
    # gradient only through the probabilities: d/dP[t, i] = E * f_i / N
    p = probs.clone().requires_grad_()
    load_balance_loss(p, experts).backward()
    torch.testing.assert_close(p.grad, (3 * torch.tensor([3 / 8, 2 / 8, 3 / 8]) / 4).expand(4, 3))


def test_load_balance_loss_is_one_when_uniform_and_grows_with_collapse():
    E, k = 8, 2
    uniform = torch.full((16, E), 1 / E)
    balanced = torch.stack([torch.tensor([i % E, (i + 1) % E]) for i in range(16)])
    assert load_balance_loss(uniform, balanced).item() == pytest.approx(1.0)
    collapsed_probs = torch.zeros(16, E)
    collapsed_probs[:, :k] = 1 / k
    collapsed = torch.tensor([[0, 1]] * 16)
    assert load_balance_loss(collapsed_probs, collapsed).item() == pytest.approx(E / k)


def test_router_z_loss_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-1.0, 4.0, 0.5]])
    expected = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 3
    assert router_z_loss(logits).item() == pytest.approx(expected)


def test_route_topk_and_renormalization():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    probs = logits.softmax(-1)
    raw = route(logits, 2, norm_topk_prob=False)
    assert raw.experts.tolist() == [[3, 2]]
    torch.testing.assert_close(raw.weights, probs[:, [3, 2]])
    normed = route(logits, 2, norm_topk_prob=True)
    torch.testing.assert_close(normed.weights, probs[:, [3, 2]] / probs[:, [3, 2]].sum())
    assert route(logits.half(), 2, False).probs.dtype == torch.float32


def signature_moe(**overrides) -> MoEFeedForward:
    """ReLU experts that map an all-ones input to a one-hot vector: expert e outputs e_e (in d = 16 dims)."""
    cfg = moe_config("relu", **overrides)
    moe = MoEFeedForward(cfg)
    h = moe.expert_hidden_size
    with torch.no_grad():
        moe.up_proj.fill_(1.0 / 16)  # every hidden unit is relu(1) = 1
        moe.down_proj.zero_()
        for e in range(moe.num_experts):
            moe.down_proj[e, :, e] = 1.0 / h
    return moe


@pytest.mark.parametrize("backend", ["loop", "auto"])
@pytest.mark.parametrize("pattern", ["random", "all_same", "one_expert_idle"])
def test_every_token_gets_exactly_its_k_experts(pattern, backend):
    torch.manual_seed(2)
    moe = signature_moe(num_experts=6, num_experts_per_tok=3)
    moe.expert_backend = backend
    tokens, E, k = 40, 6, 3
    if pattern == "random":
        experts = torch.stack([torch.randperm(E)[:k] for _ in range(tokens)])
    elif pattern == "all_same":
        experts = torch.tensor([[4, 1, 2]] * tokens)
    else:
        experts = torch.stack([torch.randperm(E - 1)[:k] + 1 for _ in range(tokens)])
    weights = torch.rand(tokens, k)
    out = moe.experts_forward(torch.ones(tokens, 16), weights, experts)
    expected = torch.zeros(tokens, 16).scatter_add_(1, experts, weights)
    torch.testing.assert_close(out, expected)
    counts = moe.experts_forward(torch.ones(tokens, 16), torch.ones(tokens, k), experts)
    assert counts.sum(1).round().tolist() == [k] * tokens  # no slot dropped or duplicated


def test_all_tokens_routed_to_the_same_experts_through_the_router():
    moe = signature_moe(num_experts=4, num_experts_per_tok=2)
    logits = torch.tensor([1.0, -1.0, -2.0, 3.0])
    with torch.no_grad():  # an all-ones input gives every token these logits
        moe.router.weight.copy_((logits / 16)[:, None].expand(4, 16))
    out = moe(torch.ones(3, 9, 16))
    p = logits.softmax(-1)
    expected = torch.zeros(16)
    expected[3], expected[0] = p[3], p[0]
    torch.testing.assert_close(out.hidden_states, expected.expand(3, 9, 16))
    torch.testing.assert_close(out.expert_load, torch.tensor([0.5, 0.0, 0.0, 0.5]))
    assert not out.expert_load.requires_grad


@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="torch has no grouped_mm")
@pytest.mark.parametrize("activation,shared", [("swiglu", True), ("polynorm", True), ("polynorm", False)])
def test_grouped_mm_backend_matches_loop(activation, shared):
    torch.manual_seed(3)
    moe = MoEFeedForward(moe_config(activation, num_experts=8, num_experts_per_tok=2, moe_shared_coefficients=shared))
    randomize_coefficients(moe)
    x = torch.randn(4, 6, 16)
    results = []
    for backend in ("loop", "grouped_mm"):
        moe.zero_grad()
        moe.expert_backend = backend
        xi = x.clone().requires_grad_()
        out = moe(xi).hidden_states
        out.sum().backward()  # a gradient with zero strides reaches the layer
        results.append([out.detach(), xi.grad] + [p.grad.clone() for p in moe.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    assert moe._use_grouped_mm(x.view(-1, 16))  # and "grouped_mm" really ran: it is what the layer picks on CPU
    moe.expert_backend = "auto"
    assert moe._use_grouped_mm(x.view(-1, 16))


def test_router_jitter_touches_only_the_router_and_only_in_training():
    torch.manual_seed(4)
    moe = MoEFeedForward(moe_config("gelu", router_jitter=0.5))
    x = torch.randn(10, 16)
    assert torch.equal(moe.eval().router_logits(x), moe.router(x))
    jittered = moe.train().router_logits(x)
    assert not torch.allclose(jittered, moe.router(x))
    # one expert, top-1: the output does not depend on the routing, so jitter must not change it
    single = MoEFeedForward(moe_config("gelu", num_experts=1, num_experts_per_tok=1, router_jitter=0.5)).train()
    x3 = torch.randn(2, 5, 16)
    with torch.no_grad():
        noisy = single(x3).hidden_states
        clean = single.eval()(x3).hidden_states
    torch.testing.assert_close(noisy, clean)


def test_model_init_uses_std_and_residual_std(make_tiny_model):
    model = make_tiny_model("gelu", hidden_size=128, num_hidden_layers=8, num_experts=4, num_experts_per_tok=2,
                            moe_intermediate_size=64, initializer_range=0.02)
    mlp = model.model.layers[3].mlp
    assert isinstance(mlp, MoEFeedForward)
    assert mlp.up_proj.std().item() == pytest.approx(0.02, rel=0.05)
    assert mlp.down_proj.std().item() == pytest.approx(0.02 / 4, rel=0.05)  # std / sqrt(2 * 8)
    assert mlp.router.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_per_expert_coefficients_are_separate_and_not_decayed(make_tiny_model):
    model = make_tiny_model("polynorm", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                            moe_shared_coefficients=False)
    act = model.model.layers[0].mlp.act
    assert isinstance(act, torch.nn.ModuleList) and len(act) == 4
    assert len({p.data_ptr() for m in act for p in m.parameters()}) == 8
    no_decay = no_decay_parameter_names(model, embedding_weight_decay=False)
    assert "model.layers.0.mlp.act.3.weight" in no_decay and "model.layers.1.mlp.act.0.bias" in no_decay
    assert "model.layers.0.mlp.up_proj" not in no_decay and "model.layers.0.mlp.down_proj" not in no_decay


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_training_steps_lower_the_loss(make_tiny_model, activation):
    model = make_tiny_model(activation, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32).train()
    ids = torch.randint(0, 512, (4, 24), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        out = model(ids, labels=ids)
        losses.append(out.loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] - 0.1, losses
    # the loss is the LM loss plus the weighted per-layer-averaged aux losses
    expected = out.lm_loss + 0.01 * out.load_balance_loss + 0.001 * out.router_z_loss
    torch.testing.assert_close(out.loss, expected)
    assert out.load_balance_loss.item() >= 1.0 - 1e-3 and out.router_z_loss.item() > 0
    assert out.expert_load.shape == (2, 4)
    torch.testing.assert_close(out.expert_load.sum(-1), torch.ones(2))


def test_aux_losses_are_averaged_over_layers(make_tiny_model):
    model = make_tiny_model("swiglu", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                            num_hidden_layers=3)
    per_layer = []
    hooks = [layer.mlp.register_forward_hook(lambda m, i, o: per_layer.append(o)) for layer in model.model.layers]
    ids = torch.randint(0, 512, (2, 10))
    out = model(ids, labels=ids)
    for h in hooks:
        h.remove()
    assert len(per_layer) == 3
    torch.testing.assert_close(out.load_balance_loss, sum(o.load_balance_loss for o in per_layer) / 3)
    torch.testing.assert_close(out.router_z_loss, sum(o.router_z_loss for o in per_layer) / 3)
    assert out.loss.item() == pytest.approx(
        out.lm_loss.item() + 0.01 * out.load_balance_loss.item() + 0.001 * out.router_z_loss.item(), rel=1e-6)


@pytest.mark.parametrize("shared", [True, False])
def test_hf_roundtrip_keeps_expert_weights(tmp_path, make_tiny_model, shared):
    from transformers import AutoModelForCausalLM

    model = make_tiny_model("polynorm", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                            moe_shared_coefficients=shared)
    randomize_coefficients(model.model.layers[0].mlp)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 512, (2, 11))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


# ---- parameter counts -----------------------------------------------------------------------------------------
def config_from_yaml(name: str, activation: str, vocab_size: int) -> PolyComConfig:
    return build.model_config(build.compose_config([f"model={name}", f"activation={activation}"]),
                              vocab_size=vocab_size)


def counts_on_meta(config: PolyComConfig):
    with torch.device("meta"):
        model = PolyComForCausalLM(config)
    counts = count_parameters(model)
    return counts, counts.active


def test_paper_moe_1b7b_matches_olmoe_size():
    swiglu = config_from_yaml("paper_moe_1b7b", "swiglu", 50304)
    polynorm = config_from_yaml("paper_moe_1b7b", "polynorm", 50304)
    assert (swiglu.moe_intermediate_size, polynorm.moe_intermediate_size) == (1024, 1536)
    routing = (swiglu.num_experts, swiglu.num_experts_per_tok, swiglu.norm_topk_prob)
    assert routing == (64, 8, False) and swiglu.qk_norm
    s, s_active = counts_on_meta(swiglu)
    p, _ = counts_on_meta(polynorm)
    assert s.active == s_active
    assert abs(p.total - s.total) / s.total < 0.005
    assert p.total - s.total == 16 * 4  # only the shared PolyNorm coefficients differ
    d, L, E, V = 2048, 16, 64, 50304
    per_layer = 4 * d * d + 2 * d + 2 * d + d * E + E * 3 * d * 1024  # attention, qk-norm, norms, router, experts
    assert s.total == L * per_layer + 2 * V * d + d
    assert s.active == s.total - L * (E - 8) * 3 * d * 1024
    # OLMoE-1B-7B: 6.9B total, 1.3B active
    assert 6.85e9 < s.total < 6.95e9 and 1.25e9 < s.active < 1.32e9


@pytest.mark.parametrize("name", ["moe_tiny", "moe_cpu_small"])
def test_small_moe_configs_active_parameters(name):
    swiglu, swiglu_active = counts_on_meta(config_from_yaml(name, "swiglu", 8192))
    gelu, _ = counts_on_meta(config_from_yaml(name, "gelu", 8192))
    cfg = config_from_yaml(name, "swiglu", 8192)
    assert (cfg.num_experts, cfg.num_experts_per_tok) == (8, 2)
    expert = cfg.num_hidden_layers * cfg.num_experts * 3 * cfg.hidden_size * cfg.moe_intermediate_size
    assert swiglu.expert == gelu.expert == expert
    assert swiglu_active == swiglu.total - expert * 3 // 4
    if name == "moe_cpu_small":  # as many active FFN parameters per token as the dense cpu_small
        dense = config_from_yaml("cpu_small", "swiglu", 8192)
        assert cfg.num_experts_per_tok * cfg.moe_intermediate_size == dense.intermediate_size


def test_benchmark_naive_moe_equals_the_layer():
    from scripts_loader import load_script

    bench = load_script("benchmark_moe")
    torch.manual_seed(5)
    moe = MoEFeedForward(moe_config("polynorm", num_experts=6, num_experts_per_tok=2, moe_shared_coefficients=False))
    randomize_coefficients(moe)
    x = torch.randn(2, 9, 16)
    out = moe(x)
    naive, lb, z = bench.naive_moe_forward(moe, x)
    torch.testing.assert_close(naive, out.hidden_states)
    torch.testing.assert_close(lb, out.load_balance_loss)
    torch.testing.assert_close(z, out.router_z_loss)


@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="torch has no grouped_mm")
def test_grouped_mm_custom_op_equals_aten_with_an_empty_expert():
    """``polycom::grouped_mm`` (what a compiled fp32 MoE calls) computes what ``aten._grouped_mm`` does, and so do
    its two backward modes, also for an expert that receives no token."""
    from polycom.model.moe import _grouped_mm_op

    torch.manual_seed(6)
    x, w = torch.randn(10, 16, requires_grad=True), torch.randn(3, 16, 8, requires_grad=True)
    offsets = torch.tensor([3, 3, 10], dtype=torch.int32)
    grad = torch.randn(10, 8)
    want = torch._grouped_mm(x, w, offs=offsets)
    got = _grouped_mm_op(x, w, offsets, "forward")
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, (x, w), grad), torch.autograd.grad(want, (x, w), grad)):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="torch has no grouped_mm")
def test_fp32_moe_compiles_in_one_graph():
    """torch 2.13's fake-tensor rule for grouped_mm accepts only bf16, so Dynamo failed on every fp32 MoE; the
    layer now traces in one graph (forward and backward, through ``polycom::grouped_mm``) and matches eager.
    ``aot_eager`` runs the same tracing as Inductor (where the failure was) without its code generation."""
    torch._dynamo.reset()
    torch.manual_seed(7)
    moe = MoEFeedForward(moe_config("polynorm", num_experts=4, num_experts_per_tok=2)).train()
    randomize_coefficients(moe)
    x = torch.randn(2, 8, 16)

    def run(layer):
        xi = x.clone().requires_grad_()
        out = layer(xi)
        loss = out.hidden_states.square().sum() + out.load_balance_loss + out.router_z_loss
        return [out.hidden_states, *torch.autograd.grad(loss, [xi, *moe.parameters()])]

    want = run(moe)
    got = run(torch.compile(moe, fullgraph=True, backend="aot_eager"))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)

"""Activation checkpointing (trainer.activation_checkpointing, polycom.model.checkpointing): the same gradients as
without it, the recomputation really happens, and it composes with transformers' switch, DDP and torch.compile.
How much memory each mode saves is measured in tests/test_memory.py."""

import copy
import warnings

import pytest
import torch

from polycom.model import PolyComConfig, PolyComForCausalLM
from polycom.model.checkpointing import CHECKPOINTING_MODES
from polycom.train.build import build_model, compose_config
from polycom.train.validate import ConfigError, validate_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(activation="polynorm", moe=False, layers=2) -> PolyComForCausalLM:
    torch.manual_seed(0)
    experts = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, router_jitter=0.1) if moe else {}
    config = PolyComConfig.matched(vocab_size=128, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                   intermediate_size=64, activation=activation, max_position_embeddings=32,
                                   tie_word_embeddings=False, **experts)
    return PolyComForCausalLM(config).train()


def _gradients(model, ids, compiled=False) -> dict:
    torch.manual_seed(1)  # the router jitter's noise: the same draw in every mode
    forward = torch.compile(model) if compiled else model
    forward(input_ids=ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _count_calls(module, counter: dict, key: str):
    return module.register_forward_hook(lambda *args: counter.__setitem__(key, counter.get(key, 0) + 1))


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("activation", ["polynorm", "swiglu", "polyrelu"])
def test_every_mode_gives_the_gradients_of_no_checkpointing(activation, moe):
    base = _model(activation, moe)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = _gradients(copy.deepcopy(base), ids)
    for mode in ("activation", "full"):
        model = copy.deepcopy(base)
        model.set_activation_checkpointing(mode)
        grads = _gradients(model, ids)
        for name, grad in reference.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=f"{mode}: {name}")


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_each_mode_recomputes_what_it_says(moe):
    """"activation" runs the FFN's activation again in backward but not attention; "full" runs the whole layer
    again; "none" runs everything once. Evaluation and no_grad never recompute."""
    model = _model("polynorm", moe, layers=1)
    layer = model.model.layers[0]
    calls: dict = {}
    _count_calls(layer.attn, calls, "attn")
    _count_calls(layer.mlp.act, calls, "act")
    ids = torch.randint(0, 128, (2, 16))
    expected = {"none": {"attn": 1, "act": 1}, "activation": {"attn": 1, "act": 2}, "full": {"attn": 2, "act": 2}}
    for mode, counts in expected.items():
        model.set_activation_checkpointing(mode)
        assert model.activation_checkpointing == mode
        calls.clear()
        model(input_ids=ids, labels=ids).loss.backward()
        assert calls == counts, mode
        calls.clear()
        with torch.no_grad():
            model(input_ids=ids, labels=ids)
        assert calls == {"attn": 1, "act": 1}, f"{mode} under no_grad"


def test_transformers_gradient_checkpointing_switch_recomputes_every_layer():
    model = _model()
    assert model.supports_gradient_checkpointing
    calls: dict = {}
    _count_calls(model.model.layers[1].attn, calls, "attn")
    ids = torch.randint(0, 128, (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers >= 5.2x: renamed activation_checkpointing_enable
        model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing and model.activation_checkpointing == "full"
        model(input_ids=ids, labels=ids).loss.backward()
        assert calls["attn"] == 2
        model.gradient_checkpointing_disable()
    assert model.activation_checkpointing == "none"


def test_generation_with_a_cache_is_unaffected():
    model = _model()
    ids = torch.randint(0, 128, (1, 5))
    model.eval()
    expected = model.generate(ids, max_new_tokens=4, do_sample=False)
    model.set_activation_checkpointing("full")
    model.train()  # checkpointing only acts while training with gradients: generate() runs under no_grad
    assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), expected)


def test_the_trainer_sets_it_from_the_config():
    for mode in CHECKPOINTING_MODES:
        cfg = compose_config(["model=tiny", f"trainer.activation_checkpointing={mode}"])
        validate_config(cfg)
        assert build_model(cfg, vocab_size=128).activation_checkpointing == mode
    assert compose_config(["model=tiny"]).trainer.activation_checkpointing == "none"
    with pytest.raises(ConfigError, match="trainer.activation_checkpointing='layer'.*none, activation, full"):
        validate_config(compose_config(["model=tiny", "trainer.activation_checkpointing=layer"]))
    with pytest.raises(ValueError, match="unknown"):
        _model().set_activation_checkpointing("layer")


@pytest.mark.parametrize("mode", ["activation", "full"])
def test_it_composes_with_ddp(mode, tmp_path):
    """DDP's gradient hooks fire once per parameter although checkpointed layers run twice (one-process group)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    base = _model("polynorm", moe=True)
    ids = torch.randint(0, 128, (2, 16))
    reference = _gradients(copy.deepcopy(base), ids)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = copy.deepcopy(base)
        model.set_activation_checkpointing(mode)
        ddp = DistributedDataParallel(model)
        torch.manual_seed(1)
        ddp(input_ids=ids, labels=ids).loss.backward()
    finally:
        dist.destroy_process_group()
    for name, grad in reference.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_it_composes_with_torch_compile():
    """Selective ("activation") and full checkpointing inside a compiled model: the eager gradients (one small
    dense model; ~1 min of compilation)."""
    base = _model("polynorm", layers=1)
    ids = torch.randint(0, 128, (2, 16))
    reference = _gradients(copy.deepcopy(base), ids)
    for mode in ("activation", "full"):
        model = copy.deepcopy(base)
        model.set_activation_checkpointing(mode)
        grads = _gradients(model, ids, compiled=True)
        for name, grad in reference.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=f"{mode}: {name}")

"""The dense decoder: parameter matching, HF round-trip, KV-cache generation, loss with labels."""

import json
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from polycom.model.activations import ACTIVATIONS
from polycom.model import PolyComConfig, PolyComForCausalLM, matched_ffn_width
from polycom.train import build
from polycom.train.config import register_schema
from conftest import REPO_ROOT

register_schema()
MODEL_CONFIGS = sorted(p.stem for p in (REPO_ROOT / "configs" / "model").glob("*.yaml"))


def model_config(name: str, activation: str, vocab_size: int = 50304) -> PolyComConfig:
    return build.model_config(build.compose_config([f"model={name}", f"activation={activation}"]),
                              vocab_size=vocab_size)


def count_on_meta(config: PolyComConfig) -> int:
    with torch.device("meta"):
        model = PolyComForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_parameter_counts_match_across_activations(name):
    counts = {}
    for act in ACTIVATIONS:
        cfg = model_config(name, act)
        polycom_scalars = cfg.num_hidden_layers * (cfg.activation_order + 1) * (
            cfg.num_experts if cfg.num_experts and not cfg.moe_shared_coefficients else 1
        ) if ACTIVATIONS[act].polycom else 0
        counts[act] = count_on_meta(cfg) - polycom_scalars
    reference = counts["swiglu"]
    for act, n in counts.items():
        assert abs(n - reference) / reference < 0.005, (name, act, n, reference)


def test_paper_dense_1b_widths_and_size():
    swiglu = model_config("paper_dense_1b", "swiglu")
    polynorm = model_config("paper_dense_1b", "polynorm")
    assert (swiglu.intermediate_size, polynorm.intermediate_size) == (5504, 8256)
    assert (swiglu.num_hidden_layers, swiglu.hidden_size, swiglu.num_attention_heads) == (24, 2048, 16)
    # 24 x (4 d^2 + 3 d 5504) = 1.21B in the blocks, plus untied 50304 x 2048 embeddings and head
    non_embedding = count_on_meta(polynorm) - 2 * 50304 * 2048
    assert 1.20e9 < non_embedding < 1.22e9


def test_gpt2_small_is_124m():
    n = count_on_meta(model_config("gpt2_small", "gelu", vocab_size=50304))
    assert 123e6 < n < 126e6, n


def test_matched_width_rule():
    assert matched_ffn_width(704, gated=True, multiple=16) == 704
    assert matched_ffn_width(704, gated=False, multiple=16) == 1056
    assert matched_ffn_width(100, gated=False, multiple=64) == 128  # rounded to the multiple


def test_polycom_coefficients_initialised_like_official(make_tiny_model):
    model = make_tiny_model("polynorm")
    act = model.model.layers[1].mlp.act
    assert torch.allclose(act.weight, torch.full((3,), 1 / 3)) and act.bias.item() == 0.0


def test_init_std_and_scaled_residual(make_tiny_model):
    model = make_tiny_model("gelu", hidden_size=256, intermediate_size=512, num_hidden_layers=8)
    std = model.config.initializer_range
    up = model.model.layers[0].mlp.up_proj.weight.std().item()
    down = model.model.layers[0].mlp.down_proj.weight.std().item()
    assert abs(up - std) / std < 0.05
    assert abs(down - std / 4) / (std / 4) < 0.05  # std / sqrt(2 * 8)
    unscaled = make_tiny_model("gelu", hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                               scaled_residual_init=False)
    assert abs(unscaled.model.layers[0].mlp.down_proj.weight.std().item() - std) / std < 0.05


def test_tied_embeddings_share_storage(make_tiny_model):
    tied = make_tiny_model(tie_word_embeddings=True)
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    untied = make_tiny_model(tie_word_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


def test_no_biases_anywhere(make_tiny_model):
    model = make_tiny_model("swiglu")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.bias is None for m in linears)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("tied", [False, True])
def test_hf_roundtrip_gives_identical_logits(tmp_path, make_tiny_model, activation, tied):
    model = make_tiny_model(activation, tie_word_embeddings=tied)
    with torch.no_grad():  # move the PolyCom coefficients away from their init so loading them matters
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "polycom"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, PolyComForCausalLM)
    ids = torch.randint(0, 512, (2, 17))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_loss_with_labels_is_shifted_cross_entropy(make_tiny_model):
    model = make_tiny_model()
    ids = torch.randint(0, 512, (3, 12))
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 512), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected)
    labels = ids.clone()
    labels[:, :6] = -100
    masked = model(ids, labels=labels).loss
    expected_masked = torch.nn.functional.cross_entropy(out.logits[:, 5:-1].reshape(-1, 512), ids[:, 6:].reshape(-1))
    assert torch.allclose(masked, expected_masked)


@pytest.mark.parametrize("activation", ["polynorm", "swiglu"])
def test_greedy_generation_with_cache_equals_recompute_loop(make_tiny_model, activation):
    # float64: in fp32 the two paths differ by ~1e-7, enough to flip a near-tie argmax of a random model
    model = make_tiny_model(activation).double()
    prompt = torch.randint(1, 512, (2, 7))
    with torch.no_grad():
        cached = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                                do_sample=False, use_cache=True)
        ids = prompt
        for _ in range(12):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, ids)


def test_cache_is_used_during_generation(make_tiny_model):
    """With a cache each decoding step feeds one new token, not the whole sequence."""
    model = make_tiny_model()
    seen_lengths = []
    hook = model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen_lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    prompt = torch.randint(1, 512, (1, 9))
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    hook.remove()
    assert seen_lengths[0] == 9 and all(n == 1 for n in seen_lengths[1:]) and len(seen_lengths) == 5


def test_left_padded_batch_generation_matches_unpadded(make_tiny_model):
    model = make_tiny_model()
    pad = model.config.pad_token_id
    short = torch.randint(1, 512, (1, 5))
    long = torch.randint(1, 512, (1, 8))
    batch = torch.cat([torch.cat([torch.full((1, 3), pad), short], 1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 3), torch.ones(1, 5)], 1), torch.ones(1, 8)]).long()
    with torch.no_grad():
        together = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False)
        alone = model.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=6, do_sample=False)
    assert torch.equal(together[0, 3:], alone[0])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="activation"):
        PolyComConfig(activation="tanh")
    with pytest.raises(ValueError, match="num_attention_heads"):
        PolyComConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        PolyComConfig(num_experts=4, num_experts_per_tok=5, moe_intermediate_size=16)


@pytest.mark.parametrize("activation,width", [("swiglu", 704), ("gelu", 1056), ("polynorm", 1056)])
def test_exported_config_holds_the_real_ffn_width_and_the_matching_rule(tmp_path, activation, width):
    config = PolyComConfig.matched(activation=activation, intermediate_size=704, ffn_width_multiple=16)
    PolyComForCausalLM(config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["intermediate_size"] == width  # the Hugging Face meaning: the width the weights have
    assert saved["ffn_width_source"]["gated_intermediate_size"] == 704
    assert saved["ffn_width_source"]["width_multiple"] == 16 and "ffn_width_multiple" not in saved
    loaded = PolyComForCausalLM.from_pretrained(tmp_path)
    assert loaded.model.layers[0].mlp.down_proj.in_features == width
    assert loaded.config.intermediate_size == width


def test_moe_config_holds_the_real_expert_width():
    config = PolyComConfig.matched(activation="polyrelu", intermediate_size=64, moe_intermediate_size=32,
                                   num_experts=4, num_experts_per_tok=2, ffn_width_multiple=16)
    assert (config.intermediate_size, config.moe_intermediate_size) == (96, 48)
    assert config.ffn_width_source["gated_moe_intermediate_size"] == 32


def test_config_json_from_before_the_real_width_is_converted(tmp_path):
    """config.json written by earlier versions held the gated width and ``ffn_width_multiple``."""
    legacy = PolyComConfig(activation="gelu", intermediate_size=704).to_dict()
    legacy.pop("ffn_width_source")
    legacy["ffn_width_multiple"] = 16
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    config = PolyComConfig.from_pretrained(tmp_path)
    assert config.intermediate_size == 1056 and config.ffn_width_source["gated_intermediate_size"] == 704
    assert "ffn_width_multiple" not in config.to_dict()

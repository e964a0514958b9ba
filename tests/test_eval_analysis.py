"""Effective rank, FFN matrix discovery (dense, gated, MoE-shaped), layer similarity, scripts/analyze.py."""

import json

import pytest
import torch
from torch import nn

from polycom.eval.analysis import effective_rank, ffn_effective_ranks, ffn_matrices, layer_similarity, token_blocks
from scripts_loader import load_script


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize("k", [1, 3, 7])
def test_erank_of_k_equal_singular_values_is_k(k):
    matrix = orthonormal(12, k, 0) @ (2.5 * torch.eye(k, dtype=torch.float64)) @ orthonormal(9, k, 1).T
    assert effective_rank(matrix) == pytest.approx(k, abs=1e-6)


def test_erank_of_a_rank_one_matrix_is_one_and_unequal_spectra_fall_between():
    assert effective_rank(torch.outer(torch.randn(10), torch.randn(6))) == pytest.approx(1.0, abs=1e-6)
    spectrum = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    p = spectrum / spectrum.sum()
    expected = float(torch.exp(-(p * p.log()).sum()))
    matrix = orthonormal(8, 4, 2) @ torch.diag(spectrum) @ orthonormal(5, 4, 3).T
    assert effective_rank(matrix) == pytest.approx(expected, abs=1e-6)
    assert 1 < expected < 4


def test_dense_ffn_matrices(make_tiny_model):
    model = make_tiny_model("polynorm")
    layers = ffn_matrices(model)
    assert len(layers) == 2
    mlp = model.model.layers[0].mlp
    assert set(layers[0]) == {"up", "down"}
    assert layers[0]["up"][0] is mlp.up_proj.weight and layers[0]["down"][0] is mlp.down_proj.weight
    rows = ffn_effective_ranks(model)
    assert rows[1]["up"] == pytest.approx(effective_rank(model.model.layers[1].mlp.up_proj.weight))
    assert rows[0]["up_max"] == min(mlp.up_proj.weight.shape)


def test_gated_ffn_is_split_into_gate_and_up(make_tiny_model):
    model = make_tiny_model("swiglu")
    weight = model.model.layers[0].mlp.up_proj.weight  # [gate | up] along the output dimension
    matrices = ffn_matrices(model)[0]
    hidden = weight.shape[0] // 2
    assert torch.equal(matrices["gate"][0], weight[:hidden]) and torch.equal(matrices["up"][0], weight[hidden:])
    assert set(ffn_effective_ranks(model)[0]) >= {"gate", "up", "down", "gate_max"}


class ExpertFFN(nn.Module):
    """MoE-shaped FFN: 3-D expert weights (one matrix per expert) and a router that is not an FFN matrix."""

    def __init__(self, d: int, h: int, experts: int, gated: bool):
        super().__init__()
        self.router = nn.Linear(d, experts, bias=False)
        self.up_proj = nn.Parameter(torch.randn(experts, d, (2 if gated else 1) * h))
        self.down_proj = nn.Parameter(torch.randn(experts, h, d))


def test_moe_shaped_layers_rank_every_expert(make_tiny_model):
    model = make_tiny_model("swiglu")
    d = model.config.hidden_size
    model.model.layers[1].mlp = ExpertFFN(d, 24, experts=3, gated=True)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj[2, :, :24] = torch.outer(torch.randn(d), torch.randn(24))  # rank-1 gate
    row = ffn_effective_ranks(model)[1]
    assert len(row["gate_experts"]) == len(row["up_experts"]) == len(row["down_experts"]) == 3
    assert row["gate_experts"][2] == pytest.approx(1.0, abs=1e-4)
    assert row["gate"] == pytest.approx(sum(row["gate_experts"]) / 3)
    assert row["up_max"] == 24 and row["down_max"] == 24


def test_unrecognized_ffn_parameters_are_an_error_not_an_empty_result(make_tiny_model):
    model = make_tiny_model()
    model.model.layers[0].mlp = nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 64))
    with pytest.raises(ValueError, match=r"layer 0: no FFN weight among .*'0.weight'"):
        ffn_matrices(model)


def test_layer_similarity_is_symmetric_with_unit_diagonal(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model(num_hidden_layers=3)
    from pydoc_data.topics import topics

    blocks = token_blocks(tiny_tokenizer, topics["if"] + topics["while"], seq_len=32, max_tokens=256)
    similarity = layer_similarity(model, blocks, batch_size=3)
    assert similarity.shape == (4, 4)
    assert torch.equal(similarity, similarity.T)
    assert torch.allclose(similarity.diagonal(), torch.ones(4, dtype=similarity.dtype), atol=1e-6)
    assert float(similarity.min()) < 0.95  # random layers do change the representation


def test_layer_similarity_is_one_when_layers_do_nothing(make_tiny_model, tiny_tokenizer):
    """Zeroed output projections make every block the identity, so all hidden states point the same way."""
    model = make_tiny_model()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    blocks = token_blocks(tiny_tokenizer, "some text to look at " * 20, seq_len=16, max_tokens=64)
    similarity = layer_similarity(model, blocks)
    assert torch.allclose(similarity, torch.ones_like(similarity), atol=1e-5)


def test_analyze_script_writes_json_and_plots(tmp_path, make_tiny_model, tiny_tokenizer):
    model_dir = tmp_path / "run" / "hf"
    make_tiny_model("gelu").save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    text_file = tmp_path / "valid.txt"
    from pydoc_data.topics import topics

    text_file.write_text(topics["for"] + topics["try"])
    result = load_script("analyze").main([str(tmp_path / "run"), "--text-file", str(text_file), "--seq-len", "64",
                                          "--max-tokens", "512"])
    out = tmp_path / "run" / "analysis"
    written = json.loads((out / "analysis.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["activation"] == "gelu" and len(written["erank"]) == 2
    assert written["layer_similarity"]["tokens"] == 512 and len(written["layer_similarity"]["matrix"]) == 3
    for png in ("erank.png", "layer_similarity.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_reads_the_text_fields_of_a_jsonl_file(tmp_path):
    path = tmp_path / "books.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "First book."}) + "\n\n" + json.dumps({"text": "Second."}) + "\n")
    assert load_script("analyze").read_text_file(path) == "First book.\n\nSecond."


@pytest.mark.parametrize("tied", [False, True])
def test_an_export_whose_weights_do_not_load_is_refused_not_analysed_at_random(tmp_path, make_tiny_model,
                                                                                tiny_tokenizer, tied):
    from safetensors.torch import load_file, save_file

    from polycom.model.loading import load_exported

    model_dir = tmp_path / "run" / "hf"
    model = make_tiny_model("gelu", tie_word_embeddings=tied)
    model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    loaded, _ = load_exported(model_dir)  # a correct export (tied: no lm_head.weight stored) loads as saved
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    weights = model_dir / "model.safetensors"
    save_file({f"_orig_mod.{k}": v for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"weights are not in its checkpoint.*_orig_mod\.model"):
        load_script("analyze").main([str(tmp_path / "run"), "--max-tokens", "64"])

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


def test_a_wider_random_matrix_has_a_higher_erank_which_the_random_reference_removes():
    """The confound the width-fair forms remove: at equal parameters the non-gated FFN is 1.5x as wide as SwiGLU's,
    and a wider random matrix already has a higher erank; divided by the random reference both start at ~1."""
    from polycom.eval.analysis import random_effective_rank

    narrow, wide = random_effective_rank((64, 128)), random_effective_rank((64, 192))
    assert narrow < wide < 64 and wide - narrow > 1.0
    assert random_effective_rank((64, 128)) == narrow  # deterministic
    generator = torch.Generator().manual_seed(5)
    for shape, reference in (((64, 128), narrow), ((64, 192), wide)):
        scaled = 0.02 * torch.randn(*shape, generator=generator, dtype=torch.float64)  # erank ignores the init std
        assert effective_rank(scaled) / reference == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow  # trains two tiny runs
def test_initial_model_is_the_trainers_model_before_its_first_step_bit_for_bit(tmp_path, monkeypatch):
    """The width-fair 'change from initialisation' rebuilds a run's initial weights from its config and seed: that
    must be exactly the model the trainer built (for a gated and a non-gated FFN), and the references follow."""
    import polycom.train.trainer as trainer
    from polycom.eval.analysis import initial_model, width_references
    from test_train import TINY, compose_train

    built = []

    def recording_build_model(*args, **kwargs):
        model = trainer_build_model(*args, **kwargs)
        built.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    trainer_build_model = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", recording_build_model)
    for activation in ("swiglu", "polynorm"):
        run = tmp_path / activation
        trainer.train(compose_train(TINY + [f"activation={activation}", "seed=3", "trainer.max_steps=4"]), run)
        rebuilt = initial_model(run).state_dict()
        assert rebuilt.keys() == built[-1].keys()
        assert all(torch.equal(rebuilt[k], v) for k, v in built[-1].items()), activation
        refs = width_references(initial_model(run), initial_model(run))
        kinds = ("gate", "up", "down") if activation == "swiglu" else ("up", "down")
        assert all(set(row) == {f"{k}_{r}" for k in kinds for r in ("init", "random")} for row in refs)
        # at initialisation the run's erank is a sample of the random reference
        assert all(row[f"{k}_init"] == pytest.approx(row[f"{k}_random"], rel=0.03) for row in refs for k in kinds)

    # scripts/analyze.py on the run folder writes the references; --references-only adds the same ones to an analysis
    # whose model is gone (a committed study run); the report turns them into the width-fair metrics
    from polycom.report.runs import analysis_metrics

    analyze = load_script("analyze")
    text = tmp_path / "valid.txt"
    text.write_text("the cat sat on the mat and looked at the dog. " * 40)
    full = analyze.main([str(run), "--text-file", str(text), "--seq-len", "32", "--max-tokens", "128"])
    assert set(full["width_references"]) == {"init", "random"}
    written = run / "analysis" / "analysis.json"
    stripped = {**full, "erank": [{k: v for k, v in row.items() if k in ("layer", "up", "down", "up_max", "down_max")}
                                  for row in full["erank"]]}
    written.write_text(json.dumps(stripped))
    for path in (run / "hf").iterdir():
        path.unlink()
    assert analyze.main([str(run), "--references-only"])["erank"] == full["erank"]
    metrics = analysis_metrics(run)
    rows = full["erank"]
    assert metrics["analysis/erank_up_minus_init"] == pytest.approx(sum(r["up"] - r["up_init"] for r in rows) / 2)
    assert metrics["analysis/erank_down_over_random"] == pytest.approx(
        sum(r["down"] / r["down_random"] for r in rows) / 2)

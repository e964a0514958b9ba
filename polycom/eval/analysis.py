"""The paper's two analyses: effective rank of FFN weights, and similarity of hidden states across layers.

Zhuo et al. report that PolyCom gives FFN weight matrices of higher effective rank and layers whose
hidden states are less alike (lower cosine similarity between layers) than ReLU/GELU/SwiGLU models.

- Effective rank (Roy & Vetterli 2007): with singular values s and p = s / sum(s),
  erank = exp(-sum p log p); k equal singular values give k, a rank-1 matrix gives 1.
- Layer similarity: for each token, the cosine similarity between its hidden states after layers i and j
  (index 0 = the embeddings, index L = the final, normed output, as in ``output_hidden_states``),
  averaged over tokens: an (L+1) x (L+1) symmetric matrix with ones on the diagonal.

Effective rank grows with a matrix's width before any training: a random Gaussian 256 x 1056 matrix has a higher
erank than a 256 x 704 one, and parameter matching makes the gated FFN (SwiGLU) 2/3 as wide as the others. So a
raw erank difference between activations is partly shape. Two width-fair forms (``width_references``):

- ``<kind>_init``: the erank of the same run's matrices at initialisation (``initial_model`` rebuilds them exactly:
  the trainer seeds, then builds the model), so ``erank - erank_init`` is what training did to that matrix;
- ``<kind>_random``: the mean erank of random Gaussian matrices of the same shape (erank ignores scale, so the
  init std does not matter), so ``erank / erank_random`` compares matrices of different widths on one scale.

FFN matrices are found by parameter name in each ``model.model.layers[i].mlp``: names containing
"down" are down projections, "gate" gate projections, "up" up projections ("router" is skipped). A gated
FFN's fused up projection ([gate | up] along its output dimension) is split in two. A 3-D parameter holds
one matrix per expert (first dimension), and each expert's matrix is ranked on its own.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import torch

from polycom.model.activations import get_activation

MATRIX_KINDS = ("gate", "up", "down")


def effective_rank(matrix: torch.Tensor) -> float:
    singular = torch.linalg.svdvals(matrix.detach().double())
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular[singular > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def ffn_matrices(model) -> list[dict[str, list[torch.Tensor]]]:
    """Per layer, ``{"gate"|"up"|"down": [2-D weight matrices]}`` (one per expert in an MoE layer)."""
    config = model.config
    fused_gate = get_activation(config.activation).gated
    layers = []
    for layer in model.model.layers:
        split_fused = fused_gate and not _has_separate_gate(layer.mlp)
        found: dict[str, list[torch.Tensor]] = {}
        for name, weight in layer.mlp.named_parameters():
            kind = _kind(name)
            if kind is None or weight.dim() < 2:
                continue
            for matrix in (weight if weight.dim() == 3 else [weight]):
                if kind == "up" and split_fused:
                    gate, up = matrix.chunk(2, dim=_output_dim(matrix, config.hidden_size))
                    found.setdefault("gate", []).append(gate)
                    found.setdefault("up", []).append(up)
                else:
                    found.setdefault(kind, []).append(matrix)
        if not found:
            names = [name for name, _ in layer.mlp.named_parameters()]
            raise ValueError(f"layer {len(layers)}: no FFN weight among the mlp's parameters {names} "
                             "(expected names containing 'up', 'gate' or 'down')")
        layers.append(found)
    return layers


def ffn_effective_ranks(model) -> list[dict]:
    """Per layer: ``{"layer", "<kind>": mean erank over its matrices, "<kind>_max": the largest possible
    erank (min of the matrix shape)}``, plus ``"<kind>_experts"`` (every matrix) when there are several."""
    rows = []
    for index, matrices in enumerate(ffn_matrices(model)):
        row: dict = {"layer": index}
        for kind in MATRIX_KINDS:
            if kind not in matrices:
                continue
            values = [effective_rank(m) for m in matrices[kind]]
            row[kind] = sum(values) / len(values)
            row[f"{kind}_max"] = min(matrices[kind][0].shape)
            if len(values) > 1:
                row[f"{kind}_experts"] = values
        rows.append(row)
    return rows


@lru_cache(maxsize=None)
def random_effective_rank(shape: tuple[int, int], samples: int = 4, seed: int = 0) -> float:
    """Mean effective rank of ``samples`` standard Gaussian matrices of ``shape`` (a fixed generator, so the same
    number every time; over samples it varies by ~0.05 for the shapes of this project's models)."""
    generator = torch.Generator().manual_seed(seed)
    return sum(effective_rank(torch.randn(*shape, generator=generator, dtype=torch.float64))
               for _ in range(samples)) / samples


def width_references(model, initial=None) -> list[dict]:
    """Per layer, for each FFN matrix kind: ``<kind>_random``, the erank of a random matrix of its shape, and
    with ``initial`` (the same model at initialisation, ``initial_model``) ``<kind>_init``, its mean erank there."""
    trained = ffn_matrices(model)
    starts = ffn_matrices(initial) if initial is not None else [None] * len(trained)
    rows = []
    for matrices, start in zip(trained, starts):
        row = {}
        for kind in MATRIX_KINDS:
            if kind not in matrices:
                continue
            row[f"{kind}_random"] = random_effective_rank(tuple(matrices[kind][0].shape))
            if start is not None:
                if [m.shape for m in start[kind]] != [m.shape for m in matrices[kind]]:
                    raise ValueError(f"the initial model's {kind} matrices have other shapes than the trained model's")
                row[f"{kind}_init"] = sum(effective_rank(m) for m in start[kind]) / len(start[kind])
        rows.append(row)
    return rows


def initial_model(run_dir: Path):
    """The run's model as it was before its first step, rebuilt from its ``config.yaml`` (and the vocabulary size
    of its ``summary.json``): seeded with ``set_seed(cfg.seed)``, then built, as ``polycom.train.trainer.train``
    does (what the trainer does in between, the tokenizer and the validation blocks, draws no random numbers;
    tests/test_eval_analysis.py checks that this equals the trainer's model bit for bit)."""
    from accelerate.utils import set_seed
    from omegaconf import OmegaConf

    from polycom.runs import CONFIG, SUMMARY
    from polycom.train.build import build_model, compose_config

    run_dir = Path(run_dir)
    missing = [name for name in (CONFIG, SUMMARY) if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} has no {' or '.join(missing)}: the initialisation cannot be rebuilt "
                                "without the run's config and vocabulary size")
    # a run trained before a config key existed gets its default (the schema's, then the run's own values on top)
    cfg = OmegaConf.merge(compose_config(), OmegaConf.load(run_dir / CONFIG))
    set_seed(cfg.seed)
    return build_model(cfg, vocab_size=json.loads((run_dir / SUMMARY).read_text())["vocab_size"]).eval()


def token_blocks(tokenizer, text: str, seq_len: int, max_tokens: int) -> torch.Tensor:
    """The text's first ``max_tokens`` tokens as (blocks, seq_len); a shorter tail is dropped."""
    ids = tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
    count = len(ids) // seq_len
    if count == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one block of {seq_len}")
    return torch.tensor(ids[:count * seq_len], dtype=torch.long).view(count, seq_len)


@torch.inference_mode()
def layer_similarity(model, blocks: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Mean over tokens of cos(h_i, h_j) for all pairs of hidden states: per-token products in float32,
    summed over tokens in float64 (a float32 sum over many tokens drifts by ~1e-5), then symmetrized
    (rounding can make the two halves differ in the last bit)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        total, tokens = None, 0
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start:start + batch_size].to(device)
            hidden = model(batch, output_hidden_states=True).hidden_states
            units = torch.stack([h.float().flatten(0, 1) for h in hidden])  # (L+1, tokens, d)
            units = torch.nn.functional.normalize(units, dim=-1)
            per_token = torch.einsum("itd,jtd->tij", units, units)  # float32 dot products over d only
            gram = per_token.double().sum(0).cpu()  # summed over tokens in float64
            total = gram if total is None else total + gram
            tokens += units.shape[1]
        mean = total / tokens
        return (mean + mean.T) / 2
    finally:
        model.train(was_training)


def _kind(name: str) -> str | None:
    lowered = name.lower()
    if "router" in lowered:
        return None
    for kind in ("down", "gate", "up"):
        if kind in lowered:
            return kind
    return None


def _has_separate_gate(mlp) -> bool:
    return any(_kind(name) == "gate" for name, _ in mlp.named_parameters())


def _output_dim(matrix: torch.Tensor, hidden_size: int) -> int:
    """The dimension of width 2h of a fused [gate | up] matrix: the one that is not the model width
    (dimension 0, ``nn.Linear``'s output, when both are)."""
    return 1 if matrix.shape[0] == hidden_size and matrix.shape[1] != hidden_size else 0

"""Effective rank of FFN weights and layer-to-layer hidden-state similarity of a saved model.

    python scripts/analyze.py <run dir or HF model folder> [--text-file valid.txt|valid.jsonl] [--max-tokens 16384]
    python scripts/analyze.py <run dir> --references-only     # a run whose model is gone (a committed study run)

Writes ``analysis.json``, ``erank.png`` (per layer and matrix) and ``layer_similarity.png`` (heatmap) to
``<dir>/analysis`` (or ``--out-dir``). Hidden states are taken on ``--text-file``, by default the
validation split of the embedded corpus (``polycom.data.embedded``). See ``polycom.eval.analysis`` for the definitions.

Each layer's erank row also holds the width-fair references: ``<kind>_random`` (a random matrix of the same shape)
and, for a run folder (``config.yaml`` and ``summary.json``), ``<kind>_init`` (the run's own matrices at
initialisation, rebuilt from its config and seed). ``--references-only`` adds just these to an existing
``analysis.json``, which needs no trained model: that is how runs whose weights were not kept get them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from polycom.eval.analysis import (MATRIX_KINDS, ffn_effective_ranks, initial_model, layer_similarity,  # noqa: E402
                                   token_blocks, width_references)
from polycom.runs import CONFIG, SUMMARY  # noqa: E402

WIDTH_REFERENCES = {
    "init": "erank of the run's own matrices at initialisation, rebuilt from config.yaml and its seed "
            "(polycom.eval.analysis.initial_model)",
    "random": "mean erank of 4 standard Gaussian matrices of the same shape, generator seed 0",
}


def model_folder(path: Path) -> Path:
    """A run folder holds its model in ``hf/``; any other folder is taken as the model itself."""
    return path / "hf" if (path / "hf" / "config.json").is_file() else path


def default_text() -> tuple[str, str]:
    """(text, description) of the default validation text: the embedded corpus's validation files."""
    from polycom.data.embedded import embedded_documents, read_document

    return "\n\n".join(read_document(d) for d in embedded_documents("validation")), "embedded corpus validation"


def read_text_file(path: Path) -> str:
    """A plain text file as it is; a .jsonl file (e.g. the Gutenberg validation books) as its ``text`` fields
    joined by blank lines."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return "\n\n".join(json.loads(line)["text"] for line in f if line.strip())
    return path.read_text(encoding="utf-8")


def is_run_folder(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / SUMMARY).is_file()


def plot_eranks(rows: list[dict], title: str, path: Path) -> None:
    """Bars: each kind's erank per layer; a black tick: the same matrix at initialisation (when known)."""
    kinds = [k for k in MATRIX_KINDS if k in rows[0]]
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(rows) * len(kinds)), 3.5))
    for offset, kind in enumerate(kinds):
        xs = [r["layer"] + (offset - (len(kinds) - 1) / 2) * width for r in rows]
        ax.bar(xs, [r[kind] for r in rows], width, label=f"{kind} (max {rows[0][f'{kind}_max']})")
        if all(f"{kind}_init" in r for r in rows):
            ax.scatter(xs, [r[f"{kind}_init"] for r in rows], marker="_", s=200, color="black", zorder=3,
                       label="at initialisation" if offset == 0 else None)
    ax.set_xlabel("layer")
    ax.set_ylabel("effective rank")
    ax.set_xticks([r["layer"] for r in rows])
    ax.set_ylim(0, 1.3 * max(r[k] for r in rows for k in kinds))  # headroom for the legend
    ax.set_title(title)
    ax.legend(fontsize="small", ncol=len(kinds), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_similarity(matrix: torch.Tensor, title: str, path: Path) -> None:
    size = matrix.shape[0]
    labels = ["emb"] + [str(i) for i in range(1, size)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 0.45 * size), max(4.0, 0.8 + 0.45 * size)))
    image = ax.imshow(matrix.numpy(), vmin=min(0.0, float(matrix.min())), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(size), labels)
    ax.set_yticks(range(size), labels)
    ax.set_xlabel("hidden state after layer")
    ax.set_title(title, fontsize="medium")
    fig.colorbar(image, ax=ax, shrink=0.8, label="mean cosine similarity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_references(path: Path, rows: list[dict], model) -> list[dict]:
    """``rows`` (``ffn_effective_ranks``) with each layer's width references; ``<kind>_init`` only for a run folder."""
    initial = initial_model(path) if is_run_folder(path) else None
    return [{**row, **refs} for row, refs in zip(rows, width_references(model, initial))]


def references_only(path: Path, out_dir: Path) -> dict:
    """Add the width references to ``out_dir/analysis.json`` of a run whose trained model may be gone: the
    initial model has the trained one's shapes, so it gives both references."""
    if not is_run_folder(path):
        raise SystemExit(f"--references-only needs a run folder with {CONFIG} and {SUMMARY}: {path}")
    target = out_dir / "analysis.json"
    if not target.is_file():
        raise SystemExit(f"--references-only adds to an existing analysis: {target} does not exist")
    result = json.loads(target.read_text())
    initial = initial_model(path)
    refs = width_references(initial, initial)
    if len(refs) != len(result["erank"]):
        raise SystemExit(f"{target} has {len(result['erank'])} layers, the run's config {len(refs)}")
    result["erank"] = [{**row, **ref} for row, ref in zip(result["erank"], refs)]
    result["width_references"] = WIDTH_REFERENCES
    target.write_text(json.dumps(result, indent=1) + "\n")
    name = f"{result['activation']}, {len(result['erank'])} layers"
    plot_eranks(result["erank"], f"FFN effective rank ({name})", out_dir / "erank.png")
    print(f"added width references to {target}; redrew {out_dir / 'erank.png'}")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a training run folder (model in hf/) or a Hugging Face model folder")
    parser.add_argument("--text-file", type=Path,
                        help="text (.txt, or .jsonl with a 'text' field) for the hidden states (default: embedded validation)")
    parser.add_argument("--max-tokens", type=int, default=16384, help="tokens of text to use")
    parser.add_argument("--seq-len", type=int, default=512, help="block length (capped at the model's window)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out-dir", type=Path, help="default: <path>/analysis")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--references-only", action="store_true",
                        help="only add the width references (erank at initialisation, of a random matrix) to an "
                             "existing analysis.json of a run folder; needs no trained model")
    args = parser.parse_args(argv)
    if args.references_only:
        return references_only(args.path, args.out_dir or args.path / "analysis")

    from polycom.model.loading import load_exported  # importing polycom.model registers the Auto classes

    folder = model_folder(args.path)
    model, tokenizer = load_exported(folder, args.device)
    if args.text_file:
        text, source = read_text_file(args.text_file), str(args.text_file)
    else:
        text, source = default_text()
    seq_len = min(args.seq_len, model.config.max_position_embeddings)
    blocks = token_blocks(tokenizer, text, seq_len, args.max_tokens)

    eranks = add_references(args.path, ffn_effective_ranks(model), model)
    similarity = layer_similarity(model, blocks, args.batch_size)
    layers = model.config.num_hidden_layers
    off_diagonal = (similarity.sum() - similarity.diagonal().sum()) / (similarity.numel() - len(similarity))
    result = {
        "model_dir": str(folder), "activation": model.config.activation,
        "erank": eranks,
        "width_references": {k: text for k, text in WIDTH_REFERENCES.items() if f"down_{k}" in eranks[0]},
        "layer_similarity": {"matrix": similarity.tolist(), "mean_off_diagonal": float(off_diagonal),
                             "adjacent": [float(similarity[i, i + 1]) for i in range(layers)],
                             "text": source, "tokens": blocks.numel(), "seq_len": seq_len},
    }
    out_dir = args.out_dir or args.path / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
    name = f"{model.config.activation}, {layers} layers"
    plot_eranks(eranks, f"FFN effective rank ({name})", out_dir / "erank.png")
    plot_similarity(similarity, f"layer similarity ({name})", out_dir / "layer_similarity.png")
    print(f"wrote {out_dir}/analysis.json, erank.png, layer_similarity.png "
          f"(mean off-diagonal similarity {off_diagonal:.3f})")
    return result


if __name__ == "__main__":
    main()

"""Evaluate a saved model on downstream tasks.

    python scripts/evaluate.py run_dir=<run> tasks=[arc_easy,piqa] limit=50

Reads the model from ``<run_dir>/hf`` (or ``hf_dir=<folder>``) and writes ``results.json`` (per task:
metrics, headline metric, and every example's chosen and gold index) and ``results.md`` (a table) to
``<run_dir>/eval`` (``<hf_dir>/eval``, or ``out_dir=``). Options: configs/evaluate.yaml.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from polycom.train.config import register_schema

register_schema()  # the ${subdir:...} resolver of the config
log = logging.getLogger("evaluate")


def resolve_dirs(cfg: DictConfig) -> tuple[Path, Path]:
    """(model folder, output folder) from exactly one of run_dir / hf_dir."""
    if (cfg.run_dir is None) == (cfg.hf_dir is None):
        raise ValueError("give exactly one of run_dir=<training run folder> or hf_dir=<Hugging Face model folder>")
    model_dir = Path(cfg.run_dir) / "hf" if cfg.run_dir is not None else Path(cfg.hf_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no saved model at {model_dir} (expected config.json from save_pretrained)")
    base = Path(cfg.run_dir) if cfg.run_dir is not None else model_dir
    return model_dir, Path(cfg.out_dir) if cfg.out_dir is not None else base / "eval"


def load_model(model_dir: Path, device: str):
    import torch

    from polycom.model.loading import load_exported  # importing polycom.model registers the Auto classes

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_exported(model_dir, device)


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from polycom.eval import evaluate_tasks, results_markdown

    model_dir, out_dir = resolve_dirs(cfg)
    model, tokenizer = load_model(model_dir, cfg.device)
    started = time.perf_counter()
    results = evaluate_tasks(model, tokenizer, list(cfg.tasks), limit=cfg.limit, data_dir=cfg.data_dir,
                             batch_size=cfg.batch_size, skip_bad_rows=cfg.skip_bad_rows,
                             too_long=cfg.too_long)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"model_dir": str(model_dir), "config": OmegaConf.to_container(cfg, resolve=True),
              "seconds": round(time.perf_counter() - started, 2), "tasks": results}
    (out_dir / "results.json").write_text(json.dumps(record) + "\n")  # compact: BLiMP alone has 67k examples
    data = cfg.data_dir or "Hugging Face Hub"
    header = f"# Downstream evaluation of `{model_dir}`\n\nlimit: {cfg.limit}, data: {data}\n\n"
    (out_dir / "results.md").write_text(header + results_markdown(results))
    log.info("wrote %s and results.md\n%s", out_dir / "results.json", results_markdown(results))


if __name__ == "__main__":
    main()

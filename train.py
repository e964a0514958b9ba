"""Train a PolyCom study model: `python train.py activation=polynorm` (see README for more)."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from polycom.train.config import register_schema

register_schema()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from polycom.train.trainer import train

    hydra_cfg = HydraConfig.get()
    group = None
    if hydra_cfg.mode == RunMode.MULTIRUN:  # all jobs of one sweep share a W&B group
        group = f"{cfg.task_name}-{Path(hydra_cfg.sweep.dir).name}"
    summary = train(cfg, Path(hydra_cfg.runtime.output_dir), wandb_group=group)
    return summary["val_loss"]  # the objective for hparams_search sweepers


if __name__ == "__main__":
    main()

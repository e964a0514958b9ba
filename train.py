"""Train a PolyCom study model: `python train.py activation=polynorm` (see README for more)."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from polycom.train import cli, signals
from polycom.train.config import register_schema
from polycom.train.launch import join_submitit_job

register_schema()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    join_submitit_job()  # a task of a multi-task submitit job (hydra/launcher=slurm_multi_*) becomes one rank
    from polycom.train.trainer import train

    from polycom.train.tracking import run_group

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    signals.resume_if_requeued(cfg, run_dir)  # a job SLURM / submitit requeued continues from its checkpoint
    with signals.graceful_stop() as stop:  # SIGINT/SIGTERM/SIGUSR1: finish the step, checkpoint, exit 128+signal
        summary = train(cfg, run_dir, wandb_group=run_group(cfg, hydra_cfg))
        run_dir = Path(summary.get("run_dir", run_dir))
        stop.finish(summary, run_dir, signals.resume_command(hydra_cfg.overrides.task, run_dir,
                                                             os.path.relpath(__file__)))
    return summary["val_loss"]  # the objective for hparams_search sweepers


if __name__ == "__main__":
    cli.run(main)  # a config error: one line, exit status 2

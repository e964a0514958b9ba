#!/usr/bin/env bash
# Reproduces this study from the repository root: 24 training runs of about 4 minutes on 2 CPU cores
# (this study's runs were made in two parts: lr 1e-3,4e-3,8e-3, then 5e-4).
# lr 2e-3 is not re-run: those are the dense study's seed-0 runs (same config but for the downstream tasks,
# which run after training and do not touch the model).
set -euo pipefail
export POLYCOM_DATA_DIR="${POLYCOM_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
study=experiments/2026-12-03-lr-grid-dense-cpu
.venv/bin/python train.py -m experiment=compare_activations activation=relu,gelu,swiglu,relu2,polyrelu,polynorm \
    optim.lr=5e-4,1e-3,4e-3,8e-3 seed=0 eval.downstream=[] trainer.progress_bar=false hydra.sweep.dir=outputs/study/lr-grid
.venv/bin/python scripts/collect_runs.py outputs/study/lr-grid experiments/2026-12-02-dense-activations-cpu/runs/*-s0 \
    --out-dir $study/runs --by optim.lr
.venv/bin/python scripts/summarize.py $study/runs --out-dir $study --by optim.lr
.venv/bin/python scripts/plot.py $study/runs --out-dir $study --by optim.lr

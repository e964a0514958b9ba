#!/usr/bin/env bash
# Reproduces this study from the repository root (about 9 minutes per run on 2 CPU cores, 18 runs).
# Run in parts if you like (one seed per call): collect_runs.py adds the parts up.
set -euo pipefail
export POLYCOM_DATA_DIR="${POLYCOM_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts/ import this checkout's polycom, wherever pip -e points
study=experiments/2026-12-02-dense-activations-cpu
for seed in 0 1 2; do
  .venv/bin/python train.py -m experiment=compare_activations activation=relu,gelu,swiglu,relu2,polyrelu,polynorm \
      seed=$seed trainer.progress_bar=false hydra.sweep.dir=outputs/study/dense-seed$seed
done
for run in outputs/study/dense-seed*/*/; do
  .venv/bin/python scripts/analyze.py "$run" --text-file "$POLYCOM_DATA_DIR/corpus/gutenberg/validation-000.jsonl"
done
.venv/bin/python scripts/collect_runs.py outputs/study/dense-seed* --out-dir $study/runs
.venv/bin/python scripts/summarize.py $study/runs --out-dir $study
.venv/bin/python scripts/plot.py $study/runs --out-dir $study

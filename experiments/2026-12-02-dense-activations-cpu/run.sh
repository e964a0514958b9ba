#!/usr/bin/env bash
# Reproduces this study from the repository root (about 9 minutes per run on 2 CPU cores, 18 runs).
#   bash experiments/2026-12-02-dense-activations-cpu/run.sh          # everything: train, analyze, collect, report
#   bash experiments/2026-12-02-dense-activations-cpu/run.sh report   # only the tables and plots, from runs/
#   bash experiments/2026-12-02-dense-activations-cpu/run.sh backfill  # what runs trained before 2026-12-07 lack
# Run in parts if you like (one seed per call): collect_runs.py adds the parts up.
set -euo pipefail
export POLYCOM_DATA_DIR="${POLYCOM_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts/ import this checkout's polycom, wherever pip -e points
study=experiments/2026-12-02-dense-activations-cpu
py=.venv/bin/python

train() {
  for seed in 0 1 2; do
    $py train.py -m experiment=compare_activations activation=relu,gelu,swiglu,relu2,polyrelu,polynorm \
        seed=$seed trainer.progress_bar=false hydra.sweep.dir=outputs/study/dense-seed$seed
  done
  for run in outputs/study/dense-seed*/*/; do
    $py scripts/analyze.py "$run" --text-file "$POLYCOM_DATA_DIR/corpus/gutenberg/validation-000.jsonl"
  done
  $py scripts/collect_runs.py outputs/study/dense-seed* --out-dir $study/runs
}

# The committed runs were trained before analyze.py wrote the width references and the trainer wrote the per-task
# counts: add them from each run's config and seed (no model weights needed; idempotent).
backfill() {
  for run in $study/runs/*/; do $py scripts/analyze.py "$run" --references-only; done
  $py scripts/count_eval_examples.py $study/runs/*/ --write
}

report() {
  $py scripts/summarize.py $study/runs --out-dir $study
  $py scripts/plot.py $study/runs --out-dir $study
}

case "${1:-all}" in
  all) train; report ;;
  report) report ;;
  backfill) backfill ;;
  *) echo "usage: run.sh [all|report|backfill]"; exit 2 ;;
esac

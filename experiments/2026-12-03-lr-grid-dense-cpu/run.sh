#!/usr/bin/env bash
# Reproduces this study from the repository root: 24 training runs of about 4 minutes on 2 CPU cores
# (this study's runs were made in two parts: lr 1e-3,4e-3,8e-3, then 5e-4).
# lr 2e-3 is not re-run: those are the dense study's seed-0 runs (same config but for the downstream tasks,
# which run after training and do not touch the model).
#   bash experiments/2026-12-03-lr-grid-dense-cpu/run.sh          # everything: train, collect, report
#   bash experiments/2026-12-03-lr-grid-dense-cpu/run.sh report   # only the tables and plot, from runs/
#   bash experiments/2026-12-03-lr-grid-dense-cpu/run.sh backfill  # what runs trained before 2026-12-07 lack
set -euo pipefail
export POLYCOM_DATA_DIR="${POLYCOM_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts/ import this checkout's polycom, wherever pip -e points
study=experiments/2026-12-03-lr-grid-dense-cpu
py=.venv/bin/python

train() {
  $py train.py -m experiment=compare_activations activation=relu,gelu,swiglu,relu2,polyrelu,polynorm \
      optim.lr=5e-4,1e-3,4e-3,8e-3 seed=0 eval.downstream=[] trainer.progress_bar=false hydra.sweep.dir=outputs/study/lr-grid
  $py scripts/collect_runs.py outputs/study/lr-grid experiments/2026-12-02-dense-activations-cpu/runs/*-s0 \
      --out-dir $study/runs --by optim.lr
}

# The lr-2e-3 runs are copies of the dense study's seed-0 runs: the same width references and per-task counts.
backfill() {
  for run in $study/runs/*/; do
    if [ -f "$run/analysis/analysis.json" ]; then $py scripts/analyze.py "$run" --references-only; fi
  done
  $py scripts/count_eval_examples.py $study/runs/*-lr0.002/ --write
}

report() {
  $py scripts/summarize.py $study/runs --out-dir $study --by optim.lr
  $py scripts/plot.py $study/runs --out-dir $study --by optim.lr
}

case "${1:-all}" in
  all) train; report ;;
  report) report ;;
  backfill) backfill ;;
  *) echo "usage: run.sh [all|report|backfill]"; exit 2 ;;
esac

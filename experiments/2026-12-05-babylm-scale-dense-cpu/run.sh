#!/usr/bin/env bash
# Reproduces (and continues) the BabyLM-scale dense study from the repository root. Every step can be re-run after
# an interruption or in a later session: runs already collected into this folder are skipped, an interrupted run
# continues from its newest checkpoint (trainer.resume=auto).
#   bash experiments/2026-12-05-babylm-scale-dense-cpu/run.sh grid     # 1. lr grid, 19 runs of 1M tokens
#   bash experiments/2026-12-05-babylm-scale-dense-cpu/run.sh runs     # 2. 6 activations x 3 seeds, ~16M tokens
#   bash experiments/2026-12-05-babylm-scale-dense-cpu/run.sh report   # 3. every table and plot the README cites
#   bash experiments/2026-12-05-babylm-scale-dense-cpu/run.sh backfill # what runs trained before 2026-12-07 lack
#   bash experiments/2026-12-05-babylm-scale-dense-cpu/run.sh status   # which runs are done
set -euo pipefail
export POLYCOM_DATA_DIR="${POLYCOM_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts/ import this checkout's polycom, wherever pip -e points
study=experiments/2026-12-05-babylm-scale-dense-cpu
activations=(relu gelu swiglu relu2 polyrelu polynorm)
py=.venv/bin/python

# The grid: every activation at 1e-3, 2e-3, 4e-3; then 8e-3 where 4e-3 was the best (PolyNorm).
cells=()
for lr in 0.001 0.002 0.004; do for act in "${activations[@]}"; do cells+=("$act $lr"); done; done
cells+=("polynorm 0.008")

grid() {
  for cell in "${cells[@]}"; do
    read -r act lr <<< "$cell"
    [ -f "$study/lr-grid/runs/$act-s0-lr$lr/summary.json" ] && continue  # collected in an earlier session
    run=outputs/study/babylm-lr-grid/$act-lr$lr
    $py train.py experiment=babylm_scale hparams_search=babylm_lr_grid activation=$act optim.lr=$lr seed=0 \
        trainer.progress_bar=false logger=none trainer.resume=auto hydra.run.dir=$run
    $py scripts/collect_runs.py $run --out-dir $study/lr-grid/runs --by optim.lr
  done
  $py scripts/summarize.py $study/lr-grid/runs --out-dir $study/lr-grid --by optim.lr
  $py scripts/plot.py $study/lr-grid/runs --out-dir $study/lr-grid --by optim.lr
}

# Each activation's best learning rate in the grid (lr-grid/summary.md, 2026-12-05).
declare -A LR=([relu]=0.002 [gelu]=0.002 [swiglu]=0.002 [relu2]=0.002 [polyrelu]=0.002 [polynorm]=0.004)

# The headline pair (SwiGLU, PolyNorm) over all seeds first, so that a study cut short by a session's end already
# gives the paired gap with an interval; then PolyReLU and the other baselines, seed by seed.
queue=()
for seed in 0 1 2; do queue+=("swiglu $seed" "polynorm $seed"); done
for seed in 0 1 2; do for act in polyrelu gelu relu2 relu; do queue+=("$act $seed"); done; done

started() { compgen -G "outputs/study/babylm/$1-s$2/checkpoints/step_*" > /dev/null; }

run_one() {
  local act=$1 seed=$2 run=outputs/study/babylm/$1-s$2
  [ -f "$study/runs/$act-s$seed/summary.json" ] && return 0  # collected in an earlier session
  $py train.py experiment=babylm_scale activation=$act optim.lr=${LR[$act]} seed=$seed trainer.progress_bar=false \
      trainer.resume=auto hydra.run.dir=$run
  $py scripts/analyze.py $run --text-file "$POLYCOM_DATA_DIR/corpus/gutenberg/validation-000.jsonl"
  $py scripts/collect_runs.py $run --out-dir $study/runs  # committed run by run
}

runs() {
  for cell in "${queue[@]}"; do if started $cell; then run_one $cell; fi; done  # finish interrupted runs first
  for cell in "${queue[@]}"; do run_one $cell; done
}

status() {  # which of the 18 runs are collected, which one has checkpoints to resume from
  for cell in "${queue[@]}"; do
    read -r act seed <<< "$cell"
    if [ -f "$study/runs/$act-s$seed/summary.json" ]; then state=collected
    elif started $act $seed; then state="started (resumes from $(ls outputs/study/babylm/$act-s$seed/checkpoints | tail -1))"
    else state=missing; fi
    echo "$act-s$seed: $state"
  done
}

# Runs trained before 2026-12-07 lack the width references (analysis.json) and the per-task counts (summary.json):
# add them from each run's config and seed, no model weights needed (idempotent).
backfill() {
  for run in $study/runs/*/; do $py scripts/analyze.py "$run" --references-only; done
  $py scripts/count_eval_examples.py $study/runs/*/ --write
}

report() {  # the grid's tables and plot too: the README cites both
  $py scripts/summarize.py $study/runs --out-dir $study
  $py scripts/plot.py $study/runs --out-dir $study
  $py scripts/summarize.py $study/lr-grid/runs --out-dir $study/lr-grid --by optim.lr
  $py scripts/plot.py $study/lr-grid/runs --out-dir $study/lr-grid --by optim.lr
}

"${1:?usage: run.sh grid|runs|report|backfill|status}"

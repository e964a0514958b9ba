#!/usr/bin/env bash
# The CPU compute ladder (PLAN.md), from the repository root. Every step can be re-run after an interruption or in a
# later session: runs already collected into this folder are skipped, an interrupted run continues from its newest
# checkpoint (trainer.resume=auto). It commits nothing.
#   bash experiments/2026-12-07-ladder-cpu/run.sh grid     # 1. lr grid: 7 activations x 4 lrs at r1, gated_polynorm at r4
#   bash experiments/2026-12-07-ladder-cpu/run.sh lr       # 2. the lr rule from the grid -> lr.json, lr.md
#   bash experiments/2026-12-07-ladder-cpu/run.sh runs     # 3. the ladder: 4 rungs x 2 budgets x 7 activations x seeds
#   bash experiments/2026-12-07-ladder-cpu/run.sh report   # 4. fits, tables, plots (scripts/ladder.py report); vs-relu/
#   bash experiments/2026-12-07-ladder-cpu/run.sh status   # which runs are done
set -euo pipefail
export POLYCOM_DATA_DIR="${POLYCOM_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts/ import this checkout's polycom, wherever pip -e points
study=experiments/2026-12-07-ladder-cpu
babylm=experiments/2026-12-05-babylm-scale-dense-cpu  # its runs are the r4 t20 cells (ladder_runs.txt), its grid r4's
activations=(swiglu polynorm gated_polynorm polyrelu relu2 gelu relu)  # the headline pair first
py=.venv/bin/python
common=(trainer.progress_bar=false logger=none trainer.resume=auto)

# The grid (seed 0): every activation at r1 on its t5 budget; at r4 the BabyLM study's grid (1M tokens) has the six
# others, so only gated_polynorm runs there. Add "r1 <activation> 0.016" when 0.008 is an activation's best at r1.
grid_cells=()
for act in "${activations[@]}"; do for lr in 0.001 0.002 0.004 0.008; do grid_cells+=("r1 $act $lr"); done; done
for lr in 0.001 0.002 0.004; do grid_cells+=("r4 gated_polynorm $lr"); done
# 0.008 was the best of the four at r1 for polynorm, gelu and polyrelu (lr-grid/runs, 2026-12-07): one lr further
for act in polynorm gelu polyrelu; do grid_cells+=("r1 $act 0.016"); done
grid_cells+=("r4 gated_polynorm 0.008")  # 0.004, its best at r4, was the edge of its three

grid() {
  for cell in "${grid_cells[@]}"; do
    read -r rung act lr <<< "$cell"
    [ -f "$study/lr-grid/runs/$act-s0-rung$rung-lr$lr/summary.json" ] && continue  # collected in an earlier session
    run=outputs/study/ladder-lr-grid/$act-$rung-lr$lr
    $py train.py experiment=ladder_cpu hparams_search=ladder_cpu_lr_grid ladder=cpu_$rung activation=$act optim.lr=$lr \
        seed=0 "${common[@]}" hydra.run.dir=$run
    $py scripts/collect_runs.py $run --out-dir $study/lr-grid/runs --by ladder.rung --by optim.lr
  done
}

lr() {  # each activation's best lr at r1 and r4, and the rule's lr at every rung
  $py scripts/ladder.py lr $study/lr-grid/runs $babylm/lr-grid/runs --ladder cpu --json $study/lr.json | tee $study/lr.md
}

# The queue, by (seed, rung): seed 0 of every cell, then seed 1, then seed 2 on the two smallest rungs; small rungs
# first, except that seed 1 of r1 (~25 min) comes before r4's seed 0, so that seed noise is measured at the small end
# early, and seed 2 of r1 (~25 min) before r4's seed 1, to tell which of SwiGLU's and GELU's r1 seeds is the slow one.
# r4 t20 is the BabyLM study's runs (seeds 0-2) for all but gated_polynorm.
queue=()
for pass in "0 r1" "0 r2" "0 r3" "1 r1" "0 r4" "1 r2" "1 r3" "2 r1" "1 r4" "2 r2"; do
  read -r seed rung <<< "$pass"
  for budget in t5 t20; do
    for act in "${activations[@]}"; do
      if [ "$rung-$budget" = r4-t20 ] && [ "$act" != gated_polynorm ]; then continue; fi
      queue+=("$rung $budget $act $seed")
    done
  done
done

collected() { [ -f "$study/runs/$3-s$4-rung$1-budget$2/summary.json" ]; }
started() { compgen -G "outputs/study/ladder-cpu/$3-$1-$2-s$4/checkpoints/step_*" > /dev/null; }

run_one() {
  local rung=$1 budget=$2 act=$3 seed=$4 run=outputs/study/ladder-cpu/$3-$1-$2-s$4
  collected "$@" && return 0
  local extra=()
  if [ "$rung-$budget" = r4-t20 ]; then extra=(trainer.compile=true); fi  # compiled, as the BabyLM runs of that cell
  # shellcheck disable=SC2046  # the overrides are one word each
  $py train.py experiment=ladder_cpu ladder=cpu_$rung ladder.budget=$budget activation=$act seed=$seed \
      $($py scripts/ladder.py lr --table $study/lr.json --overrides $rung) "${common[@]}" "${extra[@]}" \
      hydra.run.dir=$run
  $py scripts/collect_runs.py $run --out-dir $study/runs --by ladder.rung --by ladder.budget
}

runs() {
  [ -f $study/lr.json ] || { echo "no $study/lr.json: run the grid and 'run.sh lr' first" >&2; exit 1; }
  for cell in "${queue[@]}"; do if started $cell; then run_one $cell; fi; done  # finish interrupted runs first
  for cell in "${queue[@]}"; do run_one $cell; done
}

status() {
  local done=0 left=0
  for cell in "${grid_cells[@]}"; do
    read -r rung act lr <<< "$cell"
    if [ -f "$study/lr-grid/runs/$act-s0-rung$rung-lr$lr/summary.json" ]; then done=$((done + 1)); else left=$((left + 1)); fi
  done
  echo "grid: $done collected, $left to run"
  for cell in "${queue[@]}"; do
    read -r rung budget act seed <<< "$cell"
    if collected $cell; then state=collected
    elif started $cell; then state="started (resumes from $(ls outputs/study/ladder-cpu/$act-$rung-$budget-s$seed/checkpoints | tail -1))"
    else state=missing; fi
    echo "$act $rung $budget s$seed: $state"
  done
}

report() {
  local grids=(--grid $study/lr-grid/runs --grid $babylm/lr-grid/runs)
  $py scripts/ladder.py report $study "${grids[@]}"
  # against ReLU too (vs-relu/): Primer's squared-ReLU finding is relative to a ReLU Transformer
  $py scripts/ladder.py report $study "${grids[@]}" --baseline relu --out-dir $study/vs-relu > /dev/null
}

"${1:?usage: run.sh grid|lr|runs|report|status}"

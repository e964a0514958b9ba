#!/usr/bin/env bash
# One prepared check of this project on one GPU (sized for an H100 80 GB: under 8 minutes), each piece time-boxed
# so that one failure cannot eat the rest:
#   bench_cpu_small, bench_gpt2_small  training-step tokens/s and MFU of gelu/swiglu/polynorm/polyrelu, torch.compile,
#                                      bf16 autocast (scripts/benchmark.py)
#   paper      a few steps of experiment=paper_dense_1b on the embedded corpus with a 50304-token BPE (the GPU machine
#              has no Hub access) at the paper's size, seq and micro-batch/checkpointing: torch.cuda.max_memory_allocated()
#              beside scripts/estimate_memory.py's peak_bytes_per_gpu for the same overrides
#   sync       one MoE training step (polycom.train.step.train_step, bf16) under torch.cuda.set_sync_debug_mode("warn"):
#              the synchronising calls counted, with the lines that made them
#   liger      tests/test_liger.py (Liger-Kernel's PolyNorm against ours), or a clear "Liger unavailable"
# then a summary table, also written to <out-dir>/<date>-gpu-check-<gpu>.md and .json (scripts/gpu_check.py).
#
#   bash scripts/gpu_check.sh [--out-dir experiments/benchmarks] [--copy-to DIR]
#   bash scripts/gpu_check.sh --dry-run [--out-dir DIR]  # CPU, tiny settings, well under a minute: same entry points
#   bash scripts/gpu_check.sh --fetch-wheels             # on a machine with PyPI: wheels for a machine without
#
# Python: $POLYCOM_PYTHON, else .venv/bin/python if its torch sees a GPU (--dry-run: if it exists), else python3 (a
# GPU image's own CUDA torch). The repository is used in place (PYTHONPATH), nothing is built. Packages that Python
# lacks (hydra-core, omegaconf, antlr4, datasets, dill, multiprocess; liger-kernel) are installed, offline and without
# dependencies, from the wheels in $GPU_WHEELS (default .cache/gpu_wheels, made by --fetch-wheels for Python
# $GPU_PYTHON_VERSION, default 3.12) into a scratch folder on PYTHONPATH. Without a liger-kernel wheel the check runs
# and says "Liger unavailable".
# Limits in seconds: GPU_CHECK_LIMITS="bench_cpu_small=75 bench_gpt2_small=140 paper=130 sync=40 liger=60" (the
# defaults; --dry-run: 300 each).
# More overrides for the paper piece: GPU_CHECK_PAPER_OVERRIDES="trainer.compile=true" (default: eager, to fit).
# Exit status: 0 when no piece failed or timed out ("unavailable" is not a failure), 1 otherwise, 2 on a setup error.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)

DRY=0 FETCH=0 OUT_DIR="" COPY_TO=""
CMDLINE="scripts/gpu_check.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --fetch-wheels) FETCH=1 ;;
    --out-dir) OUT_DIR=$2; shift ;;
    --copy-to) COPY_TO=$2; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
WHEELS=${GPU_WHEELS:-.cache/gpu_wheels}

# ---- --fetch-wheels: here, with PyPI ---------------------------------------------------------------------------------
if [ $FETCH = 1 ]; then
  PY=${POLYCOM_PYTHON:-.venv/bin/python}
  mkdir -p "$WHEELS"
  # the versions this project's venv runs (tested together), for the GPU machine's Python
  pins=$("$PY" -m pip freeze 2>/dev/null | grep -i -E '^(hydra-core|omegaconf|datasets|dill|multiprocess)==' | tr '\n' ' ')
  antlr=$("$PY" -m pip freeze 2>/dev/null | grep -i '^antlr4-python3-runtime==')
  [ -n "$pins" ] && [ -n "$antlr" ] || { echo "gpu_check.sh: $PY lacks hydra-core/omegaconf/datasets (make install)" >&2; exit 2; }
  pyver=${GPU_PYTHON_VERSION:-3.12}
  set -x
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" $pins "${LIGER_SPEC:-liger-kernel}" || exit 2
  "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "$antlr" || exit 2  # sdist only on PyPI: a pure-Python wheel
  set +x
  ls -l "$WHEELS"
  echo "carry $WHEELS to the GPU machine (it is under .cache/, which git ignores)"
  exit 0
fi

# ---- Python, packages, environment -----------------------------------------------------------------------------------
pick_python() {
  local c
  for c in "${POLYCOM_PYTHON:-}" .venv/bin/python python3; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 || continue
    if [ $DRY = 1 ]; then
      "$c" -c "import torch" 2>/dev/null && { echo "$c"; return 0; }
    else
      "$c" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && { echo "$c"; return 0; }
    fi
  done
  return 1
}
PY=$(pick_python) || {
  echo "gpu_check.sh: no Python whose torch sees a GPU (tried \$POLYCOM_PYTHON, .venv/bin/python, python3);" \
       "on a machine without one run --dry-run" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
SITE=$WORK/site
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
[ $DRY = 1 ] && export POLYCOM_PEAK_FLOPS=${POLYCOM_PEAK_FLOPS:-1e11}  # no CPU peak measurement in a dry run

# module -> wheel-file prefix
declare -A WHEEL_OF=([hydra]=hydra_core [omegaconf]=omegaconf [antlr4]=antlr4_python3_runtime [datasets]=datasets
                     [dill]=dill [multiprocess]=multiprocess [liger_kernel]=liger_kernel)
missing_modules() {
  "$PY" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
missing=$(missing_modules "${!WHEEL_OF[@]}")
if [ -n "$missing" ]; then
  files=()
  for m in $missing; do
    f=$(ls "$WHEELS"/"${WHEEL_OF[$m]}"-*.whl 2>/dev/null | head -1)
    [ -n "$f" ] && files+=("$f")
  done
  if [ ${#files[@]} -gt 0 ]; then
    echo "installing from $WHEELS (offline, no dependencies) into $SITE: ${files[*]##*/}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${files[@]}" \
      && export PYTHONPATH="$PYTHONPATH:$SITE"
  fi
  missing=$(missing_modules "${!WHEEL_OF[@]}")
fi
required_missing=$(echo " $missing " | sed 's/ liger_kernel / /' | xargs)
if [ -n "$required_missing" ]; then
  echo "gpu_check.sh: $PY lacks $required_missing and $WHEELS holds no wheel for it: run" \
       "'bash scripts/gpu_check.sh --fetch-wheels' on a machine with PyPI and carry $WHEELS here" >&2
  exit 2
fi
case " $missing " in *" liger_kernel "*) echo "NOTE: liger-kernel is UNAVAILABLE here (no wheel in $WHEELS): the Liger parity test cannot compare against real Liger" ;; esac

# ---- the pieces ------------------------------------------------------------------------------------------------------
declare -A LIMIT=([bench_cpu_small]=75 [bench_gpt2_small]=140 [paper]=130 [sync]=40 [liger]=60)
if [ $DRY = 1 ]; then for k in "${!LIMIT[@]}"; do LIMIT[$k]=300; done; fi  # a small shared CPU box: startup dominates
for kv in ${GPU_CHECK_LIMITS:-}; do LIMIT[${kv%%=*}]=${kv#*=}; done

run_piece() {  # name, then the command; its output goes to the terminal and to $WORK/<name>.log
  local name=$1 start=$SECONDS rc; shift
  echo "$name" >> "$WORK/pieces"
  echo "${LIMIT[$name]}" > "$WORK/$name.limit"
  echo; echo "=== $name (limit ${LIMIT[$name]} s, $(date +%H:%M:%S))"
  timeout --kill-after=15 "${LIMIT[$name]}" "$@" 2>&1 | tee "$WORK/$name.log"
  rc=${PIPESTATUS[0]}
  echo "$rc" > "$WORK/$name.rc"
  echo $((SECONDS - start)) > "$WORK/$name.seconds"
}

echo "gpu_check: python $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')), work dir $WORK$([ $DRY = 1 ] && echo ', DRY RUN')"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  > "$WORK/nvidia-smi.txt" 2>&1 && cat "$WORK/nvidia-smi.txt"

ACTS=gelu,swiglu,polynorm,polyrelu
PAPER_EXPERIMENT=experiment=paper_dense_1b
if [ $DRY = 1 ]; then
  BENCH_COMMON=(--activations $ACTS --no-references --device cpu --steps 2 --warmup 1 --seq-len 32 --micro-batch 2)
  BENCH_SMALL=(--model-size tiny --vocab 256 "${BENCH_COMMON[@]}")
  BENCH_GPT2=(--model-size tiny --vocab 320 "${BENCH_COMMON[@]}")
  PAPER=(tokenizer.vocab_size=512 tokenizer.train_chars=100000 model.hidden_size=64 model.num_hidden_layers=2
         model.num_attention_heads=4 model.intermediate_size=128 trainer.seq_len=64 trainer.micro_batch_size=2
         trainer.device=cpu trainer.mixed_precision=no)
  SYNC=(--model moe_tiny --seq-len 32 --micro-batch 2 --vocab 256)
  LIGER=(--collect-only)
  OUT_DIR=${OUT_DIR:-$WORK/report}
else
  BENCH_COMMON=(--activations $ACTS --no-references --device cuda --compile --steps 10 --warmup 2)
  BENCH_SMALL=(--model-size cpu_small --vocab 8192 --seq-len 256 --micro-batch 64 "${BENCH_COMMON[@]}")
  BENCH_GPT2=(--model-size gpt2_small --vocab 50304 --seq-len 1024 --micro-batch 16 "${BENCH_COMMON[@]}")
  PAPER=(tokenizer.vocab_size=50304)
  SYNC=(--model moe_cpu_small --seq-len 512 --micro-batch 8 --vocab 8192)
  LIGER=()
  OUT_DIR=${OUT_DIR:-experiments/benchmarks}
fi
# shellcheck disable=SC2206
PAPER=("$PAPER_EXPERIMENT" data=embedded tokenizer=bpe "${PAPER[@]}" trainer.compile=false ${GPU_CHECK_PAPER_OVERRIDES:-})

run_piece bench_cpu_small "$PY" scripts/gpu_check.py bench --json "$WORK/bench_cpu_small.json" -- "${BENCH_SMALL[@]}"
run_piece bench_gpt2_small "$PY" scripts/gpu_check.py bench --json "$WORK/bench_gpt2_small.json" -- "${BENCH_GPT2[@]}"
run_piece paper "$PY" scripts/gpu_check.py paper --json "$WORK/paper.json" --steps 3 --run-dir "$WORK/paper" -- "${PAPER[@]}"
run_piece sync "$PY" scripts/gpu_check.py sync --json "$WORK/sync.json" "${SYNC[@]}"
run_piece liger "$PY" scripts/gpu_check.py liger --json "$WORK/liger.json" "${LIGER[@]}"

echo "$SECONDS" > "$WORK/total.seconds"
"$PY" scripts/gpu_check.py report --work "$WORK" --out-dir "$OUT_DIR" ${COPY_TO:+--copy-to "$COPY_TO"} \
  $([ $DRY = 1 ] && echo --dry-run) --command "$CMDLINE"
rc=$?
echo "gpu_check: ${SECONDS} s in all; logs in $WORK"
exit $rc

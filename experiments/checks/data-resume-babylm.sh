#!/usr/bin/env bash
# Issue 27's "done when" check on the BabyLM study's data (experiment=babylm_scale: Gutenberg, 4096-token BPE,
# 16 x 256 tokens per step), 300 steps per run, uncompiled, from the repository root:
#   bash experiments/checks/data-resume-babylm.sh [OUT]        # OUT: default outputs/checks/data-resume-babylm
# 1. two pretokenizations (2 workers, 50M-token shards / 1 worker, 3M-token shards) are the same tokens;
# 2. 300 steps on each are the same losses;
# 3. a data=tokens run killed (SIGKILL) after step 150 resumes from its step-100 checkpoint with the Gutenberg text
#    and the tokenizer cache gone, and gives the straight run's losses;
# 4. the same for the streaming path (data=gutenberg): the resume starts at the checkpoint's data position (no
#    fast-forward log line) and gives the straight run's losses;
# 5. the streaming path still trains on the order the committed BabyLM runs trained on: 50 steps of swiglu-s0 with
#    the study's settings give its logged losses.
# Prints one line per check: for runs, the steps compared and the largest |loss difference|.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
data=${POLYCOM_DATA_DIR:-$(cd .. && pwd)/shared/data}
out=${1:-outputs/checks/data-resume-babylm}
py=$PWD/.venv/bin/python
rm -rf "$out" && mkdir -p "$out/text"
cp -r "$data/corpus" "$out/text/"  # a copy of the text, removed before the data=tokens resume
export POLYCOM_DATA_DIR=$PWD/$out/text POLYCOM_CACHE_DIR=$PWD/$out/cache
common=(experiment=babylm_scale trainer.max_steps=300 "eval.downstream=[]" trainer.log_interval=1 eval.interval=100
        trainer.checkpoint_interval=100 trainer.compile=false logger=none trainer.progress_bar=false
        trainer.save_hf=false)

$py scripts/pretokenize.py experiment=babylm_scale --out "$out/tok-a" 2> "$out/tok-a.log"
$py scripts/pretokenize.py experiment=babylm_scale --out "$out/tok-b" --workers 1 --shard-tokens 3e6 2> "$out/tok-b.log"
$py - "$out/tok-a" "$out/tok-b" <<'PY'
import sys
import numpy as np
from polycom.data.tokens import TokenSplit, read_index
a, b = sys.argv[1:]
for split in ("train", "validation"):
    x, y = (TokenSplit(p, split, read_index(p)) for p in (a, b))
    chunks = [(s, min(1 << 22, x.num_tokens - s)) for s in range(0, x.num_tokens, 1 << 22)]
    same = x.num_tokens == y.num_tokens and all(np.array_equal(x.read(*c), y.read(*c)) for c in chunks)
    print(f"1. {split}: {x.num_tokens:,} vs {y.num_tokens:,} tokens, identical: {same}")
PY

compare() {  # compare RUN_A RUN_B [STEPS]: the losses at the steps both logged (or at STEPS, comma-separated)
  $py - "$@" <<'PY'
import json, sys
from pathlib import Path
def losses(run):
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
steps = [int(s) for s in sys.argv[3].split(",")] if len(sys.argv) > 3 else sorted(a.keys() & b.keys())
assert steps and all(s in a and s in b for s in steps), "a step is missing from a run"
print(f"{len(steps)} steps ({steps[0]}..{steps[-1]}), max |loss difference| {max(abs(a[s] - b[s]) for s in steps):.3g}")
PY
}

killed_run() {  # run "$@" in the background, SIGKILL it once metrics.jsonl has step 150
  local dir=$1; shift
  "$@" > "$dir.log" 2>&1 &
  local pid=$!
  until [ -f "$dir/metrics.jsonl" ] && grep -q '"step": 15[0-9]' "$dir/metrics.jsonl"; do
    kill -0 $pid 2> /dev/null || { echo "the run ended before step 150: $dir.log" >&2; exit 1; }
    sleep 0.5
  done
  kill -9 $pid; wait $pid || true
}

$py train.py "${common[@]}" data=tokens data.path="$out/tok-a" hydra.run.dir="$out/tokens-a" > "$out/tokens-a.log" 2>&1
$py train.py "${common[@]}" data=tokens data.path="$out/tok-b" hydra.run.dir="$out/tokens-b" > "$out/tokens-b.log" 2>&1
echo -n "2. data=tokens, the two pretokenizations: "; compare "$out/tokens-a" "$out/tokens-b"

killed_run "$out/tokens-killed" $py train.py "${common[@]}" data=tokens data.path="$out/tok-a" \
    hydra.run.dir="$out/tokens-killed"
rm -rf "$out/text" "$out/cache"  # the text and the tokenizer cache gone
POLYCOM_DATA_DIR=$PWD/$out/text $py train.py "${common[@]}" data=tokens data.path="$out/tok-a" trainer.resume=auto \
    hydra.run.dir="$out/tokens-killed" > "$out/tokens-killed-resume.log" 2>&1
echo -n "3. data=tokens killed at step 150, resumed from step 100 without the text: "
compare "$out/tokens-a" "$out/tokens-killed"

export POLYCOM_DATA_DIR=$data POLYCOM_CACHE_DIR=$PWD/$out/cache
$py train.py "${common[@]}" hydra.run.dir="$out/stream" > "$out/stream.log" 2>&1
killed_run "$out/stream-killed" $py train.py "${common[@]}" hydra.run.dir="$out/stream-killed"
$py train.py "${common[@]}" trainer.resume=auto hydra.run.dir="$out/stream-killed" > "$out/stream-resume.log" 2>&1
echo -n "4. streaming killed at step 150, resumed from step 100 ($(grep -c 're-tokenizes' "$out/stream-resume.log" || true) fast-forward lines): "
compare "$out/stream" "$out/stream-killed"

study=experiments/2026-12-05-babylm-scale-dense-cpu/runs/swiglu-s0
$py train.py experiment=babylm_scale activation=swiglu optim.lr=0.002 seed=0 trainer.stop_after=50 "eval.downstream=[]" \
    logger=none trainer.progress_bar=false hydra.run.dir="$out/babylm-swiglu-s0" > "$out/babylm-swiglu-s0.log" 2>&1
echo -n "5. streaming, first 50 steps of the committed BabyLM swiglu-s0: "
compare "$study" "$out/babylm-swiglu-s0" 25,50

"""Two CPU processes under `accelerate launch` (gloo): disjoint data, correct gradient averaging, the real loop.

DESIGN §6: `accelerate launch --cpu --num_processes 2` starts only one process, so the launch uses
--multi_gpu with ACCELERATE_USE_CPU=true, and every check asserts the world size really is 2.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def _env():
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_processes_disjoint_data_and_averaged_gradients(tmp_path, tiny_tokenizer):
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:
        for n in range(200):
            f.write(json.dumps({"text": f"doc-{n} " + "the quick brown fox jumps over the lazy dog " * 3}) + "\n")
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    script = REPO_ROOT / "tests" / "distributed" / "two_process_step.py"
    result = subprocess.run([*LAUNCH, str(script), str(tmp_path), str(corpus), str(tmp_path / "tok")],
                            cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in reports)
    docs0, docs1 = reports[0]["docs_per_rank"]
    assert docs0 and docs1 and not set(docs0) & set(docs1)
    for r in reports:
        assert r["max_update"] > 5e-4  # the step really moved the weights (lr 1e-3)
        assert r["max_abs_diff"] < 1e-5, r


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "moe_tiny"])
def test_train_py_under_two_processes(tmp_path, model):
    run_dir = tmp_path / "run"
    cmd = [*LAUNCH, "train.py", f"model={model}", "debug=smoke", "logger=none", "tokenizer.vocab_size=512",
           "trainer.max_steps=6", "trainer.checkpoint_interval=3", "trainer.log_interval=3", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6 and summary["val_loss"] > 0
    assert (run_dir / "checkpoints" / "step_00000006" / "MANIFEST.json").exists()
    if model == "moe_tiny":
        assert summary["num_params_active"] < summary["num_params"]
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["load_balance_loss"] > 0 and last["router_z_loss"] > 0
        for layer in range(2):
            assert 0 <= last[f"moe/layer{layer}/load_min"] <= 1 / 8 <= last[f"moe/layer{layer}/load_max"]
            assert 0 < last[f"moe/layer{layer}/load_entropy"] <= math.log(8) + 1e-6

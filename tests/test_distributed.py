"""Two CPU processes under `accelerate launch` (gloo): disjoint data, correct gradient averaging, and the real loop
(train.py) under DDP and FSDP2: checkpoints, resume, coefficient logging, downstream evaluation, export.

DESIGN §6: `accelerate launch --cpu --num_processes 2` starts only one process, so the launches use --multi_gpu
(or configs/accelerate/ddp_cpu.yaml, which does the same) on the CPU, and every check asserts the world size really
is 2.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

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


# --- the project's own train() (train.py) under DDP and FSDP2 on two CPU processes -----------------------------------
# Launched with configs/accelerate/ddp_cpu.yaml (which must start two processes); `parallel` picks DDP or FSDP2.
# The dense runs get the one-process data order (tests/distributed/train_spy.py, POLYCOM_SPY_GLOBAL_ORDER), so their
# losses, validation losses and PolyNorm coefficients can be compared with a one-process run step by step; the MoE
# runs read the real per-rank shards.
SPY = REPO_ROOT / "tests" / "distributed" / "train_spy.py"
CONFIG_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                 str(REPO_ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"), "--main_process_port", "0"]
SMOKE = ["debug=smoke", "logger=none", "tokenizer.vocab_size=512", "schedule=constant", "trainer.log_interval=1",
         "trainer.micro_batch_size=2", "trainer.global_batch_size=8", "eval.interval=2"]
DENSE = [*SMOKE, "model=tiny", "activation=polynorm"]
DOWNSTREAM = ["eval.downstream=[lambada]", "eval.downstream_limit=3", "eval.downstream_batch_size=1",
              "eval.downstream_interval=2"]  # 3 requests: 2 on rank 0, 1 on rank 1, one per forward
MOE = [*SMOKE, "model=moe_tiny", "activation=polyrelu", "trainer.max_steps=3"]
COEFFICIENTS = [f"polycom/layer{layer}/{name}" for layer in (0, 1) for name in ("a0", "a1", "a2", "b")]


def _run(cmd: list, env: dict | None = None) -> None:
    result = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def _launch(report_dir: Path, run_dir: Path, overrides: list, env: dict | None = None) -> list[dict]:
    """train.py under the spy on two processes; the spy's report of each rank."""
    report_dir.mkdir(parents=True, exist_ok=True)
    _run([*CONFIG_LAUNCH, str(SPY), str(report_dir), *overrides, f"hydra.run.dir={run_dir}"], env)
    return [json.loads((report_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _by_step(records: list[dict], key: str) -> dict:
    return {r["step"]: r[key] for r in records if key in r}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir):
    """The dense run on one process, 6 steps: the trajectory the two-process runs must reproduce."""
    run_dir = tmp_path_factory.mktemp("one_process")
    _run([sys.executable, "train.py", *DENSE, "trainer.max_steps=6", "trainer.checkpoint_interval=100",
          "trainer.save_hf=false", f"hydra.run.dir={run_dir}"])
    return _records(run_dir)


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two_process(request, tmp_path_factory, data_dir):
    """Per ``parallel``: the dense run for 4 steps (checkpoints, in-loop downstream eval with uneven shares, export),
    resumed to 6 (trainer.resume=auto), and an MoE PolyReLU run."""
    parallel, root = request.param, tmp_path_factory.mktemp(request.param)
    dense_run, moe_run = root / "dense", root / "moe"
    dense = [*DENSE, *DOWNSTREAM, f"parallel={parallel}", "trainer.checkpoint_interval=2",
             f"eval.data_dir={data_dir / 'downstream'}"]
    one_order = {"POLYCOM_SPY_GLOBAL_ORDER": "8"}  # trainer.global_batch_size blocks per step
    first = _launch(root / "first", dense_run, [*dense, "trainer.max_steps=4"], one_order)
    first_records, first_hf = _records(dense_run), json.loads((dense_run / "hf" / "config.json").read_text())
    resumed = _launch(root / "resumed", dense_run, [*dense, "trainer.max_steps=6", "trainer.resume=auto"], one_order)
    moe = _launch(root / "moe", moe_run, [*MOE, f"parallel={parallel}"])
    return {"parallel": parallel, "dense_run": dense_run, "moe_run": moe_run, "first": first, "resumed": resumed,
            "moe": moe, "first_records": first_records, "first_hf": first_hf}


@pytest.mark.slow
def test_two_processes_wrap_the_model_as_parallel_asks(two_process):
    for report in two_process["first"] + two_process["moe"]:
        assert report["world_size"] == 2  # configs/accelerate/ddp_cpu.yaml started two processes
        if two_process["parallel"] == "fsdp":  # FSDP2 really applied on CPU: every parameter a sharded DTensor
            assert report["distributed_type"] == "DistributedType.FSDP"
            assert report["param_classes"] == ["DTensor"] and report["placements"] == ["(Shard(dim=0),)"]
            assert report["local_numel"] < 0.6 * report["numel"]
        else:
            assert report["model_class"] == "DistributedDataParallel" and report["param_classes"] == ["Parameter"]
            assert report["local_numel"] == report["numel"]


@pytest.mark.slow
def test_two_processes_reproduce_one_process_losses_through_checkpoint_and_resume(two_process, one_process):
    """Fed the one-process data order, DDP and FSDP (fp32 reduction) give the one-process losses, validation losses
    and PolyNorm coefficients, also after resuming the sharded checkpoint of step 4 and training on to step 6."""
    first, records = two_process["first_records"], _records(two_process["dense_run"])
    assert sorted(_by_step(first, "loss")) == [1, 2, 3, 4] and sorted(_by_step(records, "loss")) == list(range(1, 7))
    for key in ["loss", "val_loss", *COEFFICIENTS]:
        want = _by_step(one_process, key)
        got = _by_step(records, key)
        assert set(got) == set(want), key
        for step in want:
            assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (key, step)
    summary = json.loads((two_process["dense_run"] / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["world_size"] == 2 and summary["complete"]
    step4 = two_process["dense_run"] / "checkpoints" / "step_00000004"
    if two_process["parallel"] == "fsdp":  # each process wrote its own shards of model and optimizer
        for part in ("pytorch_model_fsdp_0", "optimizer_0"):
            assert sorted(p.name for p in (step4 / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    else:
        assert (step4 / "model.safetensors").is_file()


@pytest.mark.slow
def test_coefficients_are_logged_from_every_polycom_layer(two_process):
    for run in ("dense_run", "moe_run"):
        logged = [r for r in _records(two_process[run]) if "loss" in r]
        assert logged and all(set(COEFFICIENTS) <= set(r) for r in logged), run
        assert logged[-1]["polycom/layer0/a0"] != pytest.approx(1 / 3, abs=1e-6)  # trained away from the init


@pytest.mark.slow
def test_in_loop_downstream_eval_runs_the_same_forwards_on_every_rank(two_process):
    records = _records(two_process["dense_run"])
    assert sorted(_by_step(records, "lambada/acc")) == [2, 4, 6]
    for session in ("first", "resumed"):
        rank0, rank1 = two_process[session]
        assert rank0["eval_shares"] and all(a > b for a, b in zip(rank0["eval_shares"], rank1["eval_shares"]))
        assert rank0["eval_forwards"] == rank1["eval_forwards"] == rank0["eval_shares"]


@pytest.mark.slow
def test_moe_under_two_processes(two_process):
    run_dir = two_process["moe_run"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["val_loss"] > 0
    assert summary["num_params_active"] < summary["num_params"]
    assert (run_dir / "checkpoints" / "step_00000003" / "MANIFEST.json").exists()
    last = _records(run_dir)[-1]
    assert last["load_balance_loss"] > 0 and last["router_z_loss"] > 0
    for layer in range(2):
        assert 0 <= last[f"moe/layer{layer}/load_min"] <= 1 / 8 <= last[f"moe/layer{layer}/load_max"]
        assert 0 < last[f"moe/layer{layer}/load_entropy"] <= math.log(8) + 1e-6


@pytest.mark.slow
def test_export_is_the_trained_model_and_loads_without_polycom(two_process, tmp_path):
    """Both exports hold the trained weights (the coefficients logged after the last update) and the model's own
    code; FSDP's (the case that exported torch's FSDP class) also load in a clean process without polycom."""
    from transformers import AutoModelForCausalLM

    from polycom.model.stats import activation_values
    from test_export import LOADER, without_polycom

    assert two_process["first_hf"]["auto_map"]["AutoModelForCausalLM"] == "modeling.PolyComForCausalLM"
    loaders = {}
    for run in ("dense_run", "moe_run"):
        run_dir = two_process[run]
        folder = run_dir / "hf"  # the dense run's is the resumed session's, replacing the first session's
        assert sorted(p.name for p in run_dir.glob("hf*")) == ["hf"]  # no partial export (hf.tmp) left
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == {"AutoConfig": "config.PolyComConfig",
                                      "AutoModelForCausalLM": "modeling.PolyComForCausalLM"}
        assert config["architectures"] == ["PolyComForCausalLM"] and not list(folder.glob("_fsdp*"))
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        assert not any(info.values()), info  # no missing, unexpected or mismatched weight
        last = [r for r in _records(run_dir) if "loss" in r][-1]  # logged after the final update
        assert activation_values(model) == pytest.approx({key: last[key] for key in COEFFICIENTS}, abs=1e-7)
        if two_process["parallel"] == "fsdp":
            loaders[run] = subprocess.Popen([sys.executable, str(LOADER), str(folder), str(tmp_path / f"{run}.json")],
                                            cwd=tmp_path, env=without_polycom(tmp_path / run),
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            text=True)
    for run, loader in loaders.items():
        _, stderr = loader.communicate(timeout=600)
        assert loader.returncode == 0, stderr[-4000:]
        loaded = json.loads((tmp_path / f"{run}.json").read_text())
        assert loaded["model_class"].endswith("modeling.PolyComForCausalLM") and not loaded["polycom_imported"]

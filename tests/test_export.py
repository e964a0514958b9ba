"""The Hugging Face export of a run (``<run>/hf``): self-contained, loadable and evaluable without polycom."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from polycom.eval import evaluate_tasks
from test_train import _train

LOADER = REPO_ROOT / "tests" / "export" / "load_export.py"
CODE_FILES = {"config.py", "modeling.py", "layers.py", "moe.py", "activations.py", "activation_kernels.py", "cpu_kernels.py"}


@pytest.fixture(scope="module")
def exported_runs(tmp_path_factory):
    """A dense (tied embeddings) and an MoE run, three steps each, exported by the trainer."""
    runs = {}
    for name, overrides in {"dense": ["activation=polynorm"], "moe": ["model=moe_tiny", "activation=polyrelu"]}.items():
        run_dir = tmp_path_factory.mktemp(name)
        _train(run_dir, [*overrides, "trainer.max_steps=3"])
        runs[name] = run_dir / "hf"
    return runs


def without_polycom(tmp_path: Path) -> dict:
    """An environment where ``import polycom`` fails: a refusing package shadows the installed one."""
    blocker = tmp_path / "block" / "polycom"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text("raise ImportError('polycom must not be needed to use an export')\n")
    return {**os.environ, "PYTHONPATH": str(blocker.parent), "OMP_NUM_THREADS": "1",
            "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}


def test_export_carries_its_model_code_and_auto_map(exported_runs):
    for folder in exported_runs.values():
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == {"AutoConfig": "config.PolyComConfig",
                                      "AutoModelForCausalLM": "modeling.PolyComForCausalLM"}
        assert CODE_FILES <= {p.name for p in folder.glob("*.py")}
        for code in folder.glob("*.py"):  # nothing of ours left to import: only relative imports
            lines = [line.strip() for line in code.read_text().splitlines()]
            assert not [line for line in lines if line.startswith(("from polycom", "import polycom"))], code.name


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_export_loads_and_generates_in_a_clean_process_without_polycom(tmp_path, exported_runs, kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = exported_runs[kind]
    out = tmp_path / "loaded.json"
    result = subprocess.run([sys.executable, str(LOADER), str(folder), str(out)], cwd=tmp_path,
                            env=without_polycom(tmp_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    loaded = json.loads(out.read_text())
    assert loaded["model_class"].startswith("transformers_modules.") and not loaded["polycom_imported"]
    assert loaded["model_class"].endswith("modeling.PolyComForCausalLM")

    # the same folder through the registered model type (polycom imported, no remote code) gives the same model
    ours = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(ours).__module__ == "polycom.model.modeling"
    ids = torch.tensor(loaded["input_ids"])
    assert AutoTokenizer.from_pretrained(folder)("The quick brown fox jumps over the lazy dog.").input_ids == ids[0].tolist()
    with torch.no_grad():
        logits = ours(input_ids=ids).logits
        generated = ours.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits, rtol=0, atol=1e-5)
    assert loaded["generated"] == generated.tolist() and len(loaded["generated"][0]) == ids.shape[1] + 8
    width = ours.config.moe_intermediate_size if ours.config.is_moe else ours.config.intermediate_size
    assert loaded["intermediate_size"] == ours.config.intermediate_size and width > 0


@pytest.mark.slow
def test_stock_lm_eval_cli_runs_the_export_on_local_tasks_and_matches_our_scorer(tmp_path, exported_runs, data_dir):
    """`lm_eval --model hf --model_args pretrained=PATH,trust_remote_code=True` with polycom unimportable, on task
    YAMLs written by scripts/lm_eval_tasks.py: the same examples and answers as scripts/evaluate.py."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, limit = exported_runs["dense"], 10
    tasks = ["arc_easy", "winogrande", "lambada", "blimp"]
    task_dir = tmp_path / "tasks"
    written = subprocess.run(
        [sys.executable, "scripts/lm_eval_tasks.py", "--out-dir", str(task_dir), "--tasks", ",".join(tasks),
         "--data-dir", str(data_dir / "downstream"), "--limit", str(limit)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert written.returncode == 0, written.stderr[-3000:]
    lm_eval = Path(sys.executable).with_name("lm_eval")
    out = tmp_path / "out"
    result = subprocess.run(
        [str(lm_eval), "run", "--model", "hf", "--model_args", f"pretrained={folder},trust_remote_code=True",
         "--include_path", str(task_dir), "--tasks", ",".join(f"polycom_{t}" for t in tasks),
         "--batch_size", "8", "--log_samples", "--output_path", str(out)],
        cwd=tmp_path, env=without_polycom(tmp_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    (results_file,) = out.rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ours = evaluate_tasks(model, AutoTokenizer.from_pretrained(folder), tasks, limit=limit,
                          data_dir=data_dir / "downstream")
    for task in ("arc_easy", "winogrande"):
        assert theirs[f"polycom_{task}"]["acc,none"] == pytest.approx(ours[task]["metrics"]["acc"])
        (samples_file,) = out.rglob(f"samples_polycom_{task}_*.jsonl")
        samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()),
                         key=lambda s: s["doc_id"])
        picked = [int(np.argmax([float(ll) for ll, _ in s["filtered_resps"]])) for s in samples]  # written as strings
        assert picked == [e["pred"] for e in ours[task]["examples"]] and len(picked) == limit
    assert theirs["polycom_arc_easy"]["acc_norm,none"] == pytest.approx(ours["arc_easy"]["metrics"]["acc_norm"])
    assert theirs["polycom_lambada"]["acc,none"] == pytest.approx(ours["lambada"]["metrics"]["acc"])
    assert theirs["polycom_lambada"]["perplexity,none"] == pytest.approx(ours["lambada"]["metrics"]["perplexity"],
                                                                         rel=1e-4)
    assert theirs["polycom_blimp"]["acc,none"] == pytest.approx(ours["blimp"]["metrics"]["acc"])


def test_task_folder_names_tables_and_groups_without_shadowing_lm_eval_tasks(tmp_path, data_dir):
    from polycom.eval.lm_eval_bridge import write_task_folder

    names = write_task_folder(["piqa", "mmlu"], data_dir / "downstream", tmp_path, limit=3)
    assert names == ["polycom_piqa", "polycom_mmlu"]
    group = json.loads((tmp_path / "polycom_mmlu.yaml").read_text())
    assert len(group["task"]) == 57 and all(t.startswith("polycom_mmlu_") for t in group["task"])
    piqa = json.loads((tmp_path / "polycom_piqa.yaml").read_text())
    assert piqa["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "polycom_piqa.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "polycom_piqa.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["query"].startswith("Question: ") and len(rows[0]["choices"]) == 2

"""Agreement with lm-evaluation-harness, the bridge, and the lm-eval command-line wrapper."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from polycom.eval import evaluate_tasks

N = 50
pytestmark = pytest.mark.usefixtures("one_thread")


def arrow_file(data_dir, folder):
    return str(data_dir / "downstream" / folder / "data-00000-of-00001.arrow")


def lm_eval_yaml_configs(data_dir) -> list[dict]:
    """arc_easy and piqa transcribed from lm-eval's own task YAMLs (prompt, choices, target), on local data:
    an independent statement of the formats, not built from polycom.eval.tasks."""
    common = {"output_type": "multiple_choice", "validation_split": "validation", "dataset_path": "arrow",
              "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                              for m in ("acc", "acc_norm")]}
    return [
        {**common, "task": "arc_easy", "doc_to_text": "Question: {{question}}\nAnswer:",
         "doc_to_target": "{{choices.label.index(answerKey)}}", "doc_to_choice": "{{choices.text}}",
         "dataset_kwargs": {"data_files": {"validation": arrow_file(data_dir, "ai2_arc/ARC-Easy/validation")}}},
        {**common, "task": "piqa", "doc_to_text": "Question: {{goal}}\nAnswer:", "doc_to_target": "label",
         "doc_to_choice": "{{[sol1, sol2]}}",
         "dataset_kwargs": {"data_files": {"validation": arrow_file(data_dir, "piqa/plain_text/validation")}}},
    ]


def per_doc(samples):
    """lm-eval's per-example log-likelihoods, acc and acc_norm, in document order."""
    ordered = sorted(samples, key=lambda s: s["doc_id"])
    return ([[ll for ll, _ in s["filtered_resps"]] for s in ordered], [s["acc"] for s in ordered],
            [s["acc_norm"] for s in ordered], [int(s["target"]) for s in ordered])


def test_scorer_agrees_with_lm_eval_on_every_example(data_dir, make_tiny_model, tiny_tokenizer):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model = make_tiny_model()
    output = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tiny_tokenizer, backend="causal", batch_size=16),
        tasks=lm_eval_yaml_configs(data_dir), limit=N, log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_defaults=False))
    ours = evaluate_tasks(model, tiny_tokenizer, ["arc_easy", "piqa"], limit=N, data_dir=data_dir / "downstream",
                          batch_size=8)
    for task in ("arc_easy", "piqa"):
        lls, acc, acc_norm, gold = per_doc(output["samples"][task])
        examples = ours[task]["examples"]
        assert len(lls) == len(examples) == N
        assert [e["gold"] for e in examples] == gold
        assert [e["pred"] for e in examples] == [int(np.argmax(x)) for x in lls]
        assert [float(e["pred"] == e["gold"]) for e in examples] == acc
        assert [float(e["pred_norm"] == e["gold"]) for e in examples] == acc_norm
        assert ours[task]["metrics"]["acc"] == pytest.approx(output["results"][task]["acc,none"])
        assert ours[task]["metrics"]["acc_norm"] == pytest.approx(output["results"][task]["acc_norm,none"])
    # the per-request log-likelihoods themselves agree, not just the argmax
    from polycom.eval import load_examples, score_requests
    from polycom.eval.tasks import get_task

    examples, _ = load_examples(get_task("piqa"), data_dir / "downstream", N)
    scores = score_requests(model, tiny_tokenizer, [r for e in examples for r in e.requests])
    theirs = [ll for doc in per_doc(output["samples"]["piqa"])[0] for ll in doc]
    assert [s for s, _ in scores] == pytest.approx(theirs, abs=1e-3)


def test_bridge_runs_our_tasks_through_lm_eval_from_a_saved_folder(tmp_path, data_dir, make_tiny_model, tiny_tokenizer):
    """Multiple-input (winogrande), loglikelihood (lambada) and per-paradigm (blimp) configs; model by path."""
    from polycom.eval.lm_eval_bridge import run_lm_eval, summarize, task_configs

    tasks = ["winogrande", "lambada", "blimp"]
    configs = task_configs(tasks, data_dir / "downstream")
    assert [c["task"] for c in configs][:3] == ["winogrande", "lambada", "blimp_adjunct_island"]
    assert len(configs) == 2 + 67 and configs[-1]["task"] == "blimp_wh_vs_that_with_gap_long_distance"
    assert configs[0]["dataset_path"] == "arrow" and configs[1]["dataset_path"] == "json"

    model = make_tiny_model(seed=1)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    output = run_lm_eval(str(tmp_path), tasks=tasks, data_dir=data_dir / "downstream", limit=6)
    theirs = summarize(output, tasks)
    ours = evaluate_tasks(model, tiny_tokenizer, tasks, limit=6, data_dir=data_dir / "downstream")
    for task in tasks:
        for metric, value in ours[task]["metrics"].items():
            assert theirs[task][metric] == pytest.approx(value, rel=1e-4), (task, metric)


@pytest.mark.slow
def test_lm_eval_command_line_wrapper_loads_a_polycom_folder(tmp_path, data_dir, make_tiny_model, tiny_tokenizer):
    """`python -m polycom.eval.lm_eval_cli` = lm-eval's CLI + the registered polycom model type, so the folder's
    own code is not needed (trust_remote_code=False); local data through an --include_path task YAML."""
    model = make_tiny_model(seed=2)
    model_dir = tmp_path / "hf"
    model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "arc_easy_local.yaml").write_text(json.dumps({  # JSON is YAML
        "task": "arc_easy_local", "dataset_path": "arrow", "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"validation": arrow_file(data_dir, "ai2_arc/ARC-Easy/validation")}},
        "validation_split": "validation", "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{choices.label.index(answerKey)}}", "doc_to_choice": "{{choices.text}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "polycom.eval.lm_eval_cli", "run", "--model", "hf", "--model_args",
         f"pretrained={model_dir},trust_remote_code=False", "--tasks", "arc_easy_local", "--include_path",
         str(task_dir), "--limit", "12", "--batch_size", "8", "--output_path", str(out)],
        cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (results_file,) = out.rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]["arc_easy_local"]
    ours = evaluate_tasks(model, tiny_tokenizer, ["arc_easy"], limit=12, data_dir=data_dir / "downstream")["arc_easy"]
    assert theirs["acc,none"] == pytest.approx(ours["metrics"]["acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["metrics"]["acc_norm"])

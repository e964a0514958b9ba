"""Request building for every downstream task on real rows, written out from lm-eval's task YAMLs; sources;
row validation."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from polycom.eval import TASKS, load_examples
from polycom.eval.tasks import Request, get_task
from scripts_loader import load_script


def first_examples(data_dir, name, limit=1):
    examples, skipped = load_examples(get_task(name), data_dir / "downstream", limit)
    assert skipped == 0
    return examples


def test_all_fourteen_tasks_are_registered():
    assert list(TASKS) == ["arc_easy", "arc_challenge", "piqa", "sciq", "winogrande", "hellaswag", "boolq",
                           "openbookqa", "copa", "commonsense_qa", "social_iqa", "mmlu", "lambada", "blimp"]
    headlines = {name: task.headline for name, task in TASKS.items()}
    assert {n for n, h in headlines.items() if h == "acc_norm"} == {
        "piqa", "hellaswag", "openbookqa", "arc_challenge", "commonsense_qa", "social_iqa"}


def test_arc_easy(data_dir):
    (ex,) = first_examples(data_dir, "arc_easy")
    context = "Question: Which technology was developed most recently?\nAnswer:"
    assert ex.requests == tuple(Request(context, " " + a) for a in
                                ["cellular telephone", "television", "refrigerator", "airplane"])
    assert ex.gold == 0
    assert ex.answers == ("cellular telephone", "television", "refrigerator", "airplane")


def test_arc_challenge(data_dir):
    (ex,) = first_examples(data_dir, "arc_challenge")
    assert ex.requests[0].context == (
        "Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls the "
        "farthest. What should they do so they can repeat their investigation?\nAnswer:")
    assert [r.continuation for r in ex.requests] == [
        " Put the objects in groups.", " Change the height of the ramp.", " Choose different objects to roll.",
        " Record the details of the investigation."]
    assert ex.gold == 3  # answerKey "D"


def test_piqa(data_dir):
    (ex,) = first_examples(data_dir, "piqa")
    context = "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert {r.context for r in ex.requests} == {context}
    assert ex.requests[0].continuation == (
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will "
        "also need to supply it with a water bottle and a food dish.")
    assert ex.requests[1].continuation.startswith(
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans")
    assert ex.gold == 0


def test_sciq_with_and_without_support(data_dir):
    examples = first_examples(data_dir, "sciq", 3)
    assert examples[0].requests[0].context == (
        "\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:")
    assert [r.continuation for r in examples[0].requests] == [" Linnaeus", " shaw", " Scopes", " darwin"]
    assert all(ex.gold == 3 for ex in examples)
    with_support = examples[2].requests[0].context
    assert with_support.startswith("A frameshift mutation is a deletion or insertion of one or more nucleotides that")
    assert with_support.endswith("\nQuestion: A frameshift mutation is a deletion or insertion of one or more of what "
                                 "that changes the reading frame of the base sequence?\nAnswer:")


def test_winogrande_partial_scoring(data_dir):
    (ex,) = first_examples(data_dir, "winogrande")
    assert ex.requests == (
        Request("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        Request("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    )
    assert ex.gold == 1  # answer "2"


def test_hellaswag_preprocessing(data_dir):
    examples = first_examples(data_dir, "hellaswag", 4)
    first = examples[0]
    assert first.requests[0].context == ("Pole vault: Pole vault is a sport where you run with a pole and stop and "
                                         "swing your body. A few women")
    assert [r.continuation for r in first.requests] == [
        " go down a rock and stop.", " watch from around a pole vault.", " are in the wading pool.",
        " are in the gym practicing to do this pole vault, trying to do their best."]
    assert first.gold == 3
    wikihow = examples[3]  # [header]/[title]/[step] markers, empty ctx_b
    assert wikihow.requests[0].context == (
        "Sports and Fitness: How to bowl the leg spinner's variations. To bowl a googly, you grip the ball the same "
        "as you would for a leg break but hold it so your palm faces away from you. As you bowl, you bring your "
        "elbow close to your head and cock your wrist so that back of your hand faces the batsman. You spin the "
        "ball by rotating the fingers.")
    assert wikihow.requests[0].continuation == (
        "  If you're outside, the batsman only looks at the batsman as they dribble.. If you're inside, the batsman "
        "lets you line up the batsman with you.")
    assert wikihow.requests[3].continuation == (
        "  Only let the ball hit your side as you come out of the ball, not your core. Remember to rotate your "
        "wrist so your hand reaches over your head, not away from it.")
    assert wikihow.gold == 2


def test_boolq(data_dir):
    (ex,) = first_examples(data_dir, "boolq")
    context = ex.requests[0].context
    assert context.startswith("All biomass goes through at least some of these steps: it needs to be grown,")
    assert context.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [r.continuation for r in ex.requests] == [" no", " yes"]
    assert ex.gold == 0  # answer False


def test_openbookqa(data_dir):
    (ex,) = first_examples(data_dir, "openbookqa")
    assert ex.requests[0].context == ("Frilled sharks and angler fish live far beneath the surface of the ocean, "
                                      "which is why they are known as")
    assert [r.continuation for r in ex.requests] == [" Deep sea animals", " fish", " Long Sea Fish", " Far Sea Animals"]
    assert ex.gold == 0


def test_copa_connector_and_lowercased_choice(data_dir):
    examples = first_examples(data_dir, "copa", 5)
    assert examples[0].requests == (
        Request("The man turned on the faucet therefore", " the toilet filled with water."),
        Request("The man turned on the faucet therefore", " water flowed from the spout."),
    )
    assert examples[0].gold == 1
    assert examples[4].requests == (  # a "cause" question
        Request("The hamburger meat browned because", " the cook froze it."),
        Request("The hamburger meat browned because", " the cook grilled it."),
    )
    assert examples[4].gold == 1


def test_commonsense_qa_cloze(data_dir):
    (ex,) = first_examples(data_dir, "commonsense_qa")
    assert ex.requests[0].context == ("Question: A revolving door is convenient for two direction travel, but it also "
                                      "serves as a security measure at a what?\nAnswer:")
    assert [r.continuation for r in ex.requests] == [" bank", " library", " department store", " mall", " new york"]
    assert ex.gold == 0


def test_social_iqa(data_dir):
    (ex,) = first_examples(data_dir, "social_iqa")
    assert ex.requests[0].context == ("Q: Tracy didn't go home that evening and resisted Riley's attacks. What does "
                                      "Tracy need to do before this?\nA:")
    assert [r.continuation for r in ex.requests] == [
        " make a new plan", " Go home and see Riley", " Find somewhere to go"]
    assert ex.gold == 2  # label "3"


def test_mmlu_cloze_per_subject_limit(data_dir):
    examples = first_examples(data_dir, "mmlu", 2)
    assert len(examples) == 57 * 2
    first = examples[0]
    assert first.requests[0].context == (
        "The following are questions (with answers) about abstract algebra.\n\n"
        "Question: Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nAnswer:")
    assert [r.continuation for r in first.requests] == [" 0", " 4", " 2", " 6"]
    assert first.gold == 1
    assert first.meta == {"subject": "abstract_algebra"}
    assert examples[-1].meta == {"subject": "world_religions"}
    biology = next(e for e in examples if e.meta["subject"] == "high_school_biology")
    assert "about high school biology.\n\n" in biology.requests[0].context


def test_lambada(data_dir):
    (ex,) = first_examples(data_dir, "lambada")
    (request,) = ex.requests
    assert request.context.startswith("In my palm is a clear stone, and inside it is a small ivory statuette.")
    assert not request.context.endswith(" ")
    assert request.continuation == " signs"


def test_blimp_pairs_per_paradigm(data_dir):
    examples = first_examples(data_dir, "blimp", 2)
    assert len(examples) == 67 * 2
    first = examples[0]
    assert first.requests == (Request("", " Who should Derek hug after shocking Richard?"),
                              Request("", " Who should Derek hug Richard after shocking?"))
    assert first.gold == 0
    assert first.meta == {"paradigm": "adjunct_island", "phenomenon": "island_effects"}
    # the files carry 13 linguistics_term values (the paper groups s-selection under argument structure: 12)
    assert len({e.meta["phenomenon"] for e in examples}) == 13


def test_hub_is_not_touched_when_a_local_folder_is_missing_a_set(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"arc_easy: no local data under .*ai2_arc/ARC-Easy/validation"):
        load_examples(get_task("arc_easy"), tmp_path, 5)
    with pytest.raises(FileNotFoundError, match=r"mmlu \(abstract_algebra\)"):
        load_examples(get_task("mmlu"), tmp_path, 5)


def test_hub_path_asks_for_the_usual_names(monkeypatch, data_dir):
    """Without a local folder rows come from datasets.load_dataset(path, config, split[:limit]); here a stand-in
    serves the local copies under the Hub names, so the code path runs offline."""
    import datasets

    local = {("allenai/ai2_arc", "ARC-Easy", "validation"): "ai2_arc/ARC-Easy/validation"}
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        base, _, rows = split.partition("[:")
        table = datasets.load_from_disk(str(data_dir / "downstream" / local[(path, name, base)]))
        return table.select(range(int(rows.rstrip("]"))))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = load_examples(get_task("arc_easy"), None, 3)[0]
    assert calls == [("allenai/ai2_arc", "ARC-Easy", "validation[:3]")]
    assert hub == first_examples(data_dir, "arc_easy", 3)
    with pytest.raises(RuntimeError, match=r"mmlu: could not load cais/mmlu \(abstract_algebra, split test\[:2\]\)"):
        load_examples(get_task("mmlu"), None, 2)  # the stand-in has no MMLU: a failure names task and dataset


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown task 'arc_medium'.*arc_easy"):
        get_task("arc_medium")


def _write_piqa(folder, rows):
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "piqa" / "plain_text" / "validation"))


def test_malformed_rows_fail_naming_task_row_and_field(tmp_path):
    good = {"goal": "g", "sol1": "a", "sol2": "b", "label": 1}
    _write_piqa(tmp_path, [good, {**good, "label": 5}, good])
    with pytest.raises(ValueError, match=r"piqa: row 1, field 'label': label 5 is out of range for 2 choices"):
        load_examples(get_task("piqa"), tmp_path, None)
    examples, skipped = load_examples(get_task("piqa"), tmp_path, None, skip_bad_rows=True)
    assert (len(examples), skipped) == (2, 1)


def test_missing_field_and_bad_json_are_reported(tmp_path):
    folder = tmp_path / "lambada_openai"
    folder.mkdir()
    (folder / "lambada_openai.jsonl").write_text(json.dumps({"context": "a b c"}) + "\n")
    with pytest.raises(ValueError, match=r"lambada: row 0, field 'continuation': missing"):
        load_examples(get_task("lambada"), tmp_path, None)
    (folder / "lambada_openai.jsonl").write_text('{"context": "a", "continuation": "b"}\n{not json\n')
    with pytest.raises(ValueError, match=r"lambada: .*line 2 is not valid JSON"):
        load_examples(get_task("lambada"), tmp_path, None)


def test_limit_takes_the_first_rows_in_order(data_dir):
    five = first_examples(data_dir, "arc_easy", 5)
    three = first_examples(data_dir, "arc_easy", 3)
    assert five[:3] == three


def test_evaluate_script_end_to_end(tmp_path, data_dir, make_tiny_model, tiny_tokenizer):
    """`scripts/evaluate.py run_dir=...` on a saved tiny model writes metrics and per-example indices."""
    run_dir = tmp_path / "run"
    make_tiny_model().save_pretrained(run_dir / "hf")
    tiny_tokenizer.save_pretrained(run_dir / "hf")
    env = {**os.environ, "POLYCOM_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "scripts/evaluate.py", f"run_dir={run_dir}", "tasks=[arc_easy,copa,blimp]",
                             "limit=3", "batch_size=8", "device=cpu"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    written = json.loads((run_dir / "eval" / "results.json").read_text())
    assert written["config"]["data_dir"] == f"{data_dir}/downstream"
    arc = written["tasks"]["arc_easy"]
    assert arc["n"] == 3 and arc["headline"] == "acc" and set(arc["metrics"]) == {"acc", "acc_norm"}
    assert [e["gold"] for e in arc["examples"]] == [ex.gold for ex in first_examples(data_dir, "arc_easy", 3)]
    assert all(0 <= e["pred"] < 4 and 0 <= e["pred_norm"] < 4 for e in arc["examples"])
    assert arc["metrics"]["acc"] == sum(e["pred"] == e["gold"] for e in arc["examples"]) / 3
    assert written["tasks"]["blimp"]["n"] == 67 * 3
    table = (run_dir / "eval" / "results.md").read_text()
    assert "| arc_easy | 3 |" in table and "| copa | 3 |" in table and not (REPO_ROOT / "evaluate.log").exists()


def test_evaluate_script_folders(tmp_path):
    from omegaconf import OmegaConf

    resolve_dirs = load_script("evaluate").resolve_dirs
    hf_dir = tmp_path / "export"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    cfg = OmegaConf.create({"run_dir": None, "hf_dir": str(hf_dir), "out_dir": None})
    assert resolve_dirs(cfg) == (hf_dir, hf_dir / "eval")
    assert resolve_dirs(OmegaConf.merge(cfg, {"out_dir": str(tmp_path / "o")}))[1] == tmp_path / "o"
    with pytest.raises(ValueError, match="exactly one of run_dir"):
        resolve_dirs(OmegaConf.merge(cfg, {"run_dir": str(tmp_path)}))
    with pytest.raises(FileNotFoundError, match="no saved model at"):
        resolve_dirs(OmegaConf.create({"run_dir": str(tmp_path), "hf_dir": None, "out_dir": None}))


def test_a_constant_model_scores_exactly_chance_on_blimp_and_its_ties_are_counted(data_dir):
    """A model that gives both sentences of every pair the same log-probability must score 0.5,
    not 1.0 (lm-eval's argmax counts a tie as right) nor 0.0 (a strict > counts it wrong)."""
    from polycom.eval.metrics import task_results

    task = get_task("blimp")
    examples = first_examples(data_dir, "blimp", 3)
    result = task_results(task, examples, [(-42.0, False)] * (2 * len(examples)))
    assert result["metrics"]["acc"] == 0.5 and result["ties"] == len(examples) == 67 * 3
    assert {m["acc"] for groups in result["groups"].values() for m in groups.values()} == {0.5}
    # one right, one wrong, two ties: half right overall, and only the ties are counted as such
    scores = [(-1.0, False), (-2.0, False), (-2.0, False), (-1.0, False)] + [(-3.0, False)] * 4
    mixed = task_results(task, examples[:4], scores)
    assert mixed["ties"] == 2 and [e["tie"] for e in mixed["examples"]] == [False, False, True, True]
    assert mixed["metrics"]["acc"] == 0.5  # paradigm 1: (1 + 0 + 0.5) / 3, paradigm 2: one tie


def test_recounted_examples_equal_what_the_evaluation_scored_and_left_out(tmp_path, data_dir):
    """scripts/count_eval_examples.py gives a run's per-task counts without its model: they must equal the counts
    the evaluation itself writes (flatten_metrics), left-out examples included."""
    from omegaconf import OmegaConf

    from polycom.data import build_tokenizer
    from polycom.eval import evaluate_tasks, flatten_metrics
    from polycom.train.build import build_model, compose_config

    cfg = compose_config(["model=tiny", "debug=smoke", "tokenizer.vocab_size=512", "trainer.seq_len=32",
                          "eval.downstream=[piqa,arc_easy]", "eval.downstream_limit=30",
                          f"eval.data_dir={data_dir}/downstream"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run / "summary.json").write_text(json.dumps({"activation": "gelu", "piqa/acc": 0.5}))
    counts = load_script("count_eval_examples").main([str(run), "--write"])[str(run)]
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.data)
    results = evaluate_tasks(build_model(cfg, tokenizer), tokenizer, ["piqa", "arc_easy"], limit=30,
                             data_dir=data_dir / "downstream")
    flat = flatten_metrics(results)
    assert counts == {k: flat[k] for k in counts} and set(counts) == {
        f"{t}/{c}" for t in ("piqa", "arc_easy") for c in ("n", "too_long", "skipped")}
    assert flat["piqa/too_long"] > 0 and flat["piqa/n"] + flat["piqa/too_long"] == 30  # a 32-token window
    assert json.loads((run / "summary.json").read_text()) == {"activation": "gelu", "piqa/acc": 0.5, **counts}
    (run / "summary.json").write_text(json.dumps({"piqa/too_long": flat["piqa/too_long"] + 1}))
    with pytest.raises(SystemExit, match="already holds other counts"):
        load_script("count_eval_examples").main([str(run), "--write"])

"""The scorer and the metrics: rigged models with known answers, truncation, batching, two processes."""

import json
import math
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import datasets
import pytest
import torch
from torch import nn

from conftest import REPO_ROOT
from polycom.eval import Example, Request, evaluate_tasks, load_examples, score_requests
from polycom.eval.metrics import task_results
from polycom.eval.scorer import encode_requests
from polycom.eval.tasks import get_task


class BigramModel(nn.Module):
    """Logits that depend only on the current input token: ``table[token]``. No ``logits_to_keep`` argument,
    so the scorer's path for models without it is exercised too."""

    def __init__(self, table: torch.Tensor, window: int = 256):
        super().__init__()
        self.table = nn.Parameter(table)
        self.config = SimpleNamespace(max_position_embeddings=window)

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])


VOCAB = 512


pytestmark = pytest.mark.usefixtures("one_thread")


def uniform_model() -> BigramModel:
    """Every token costs exactly log(VOCAB) nats: fewer continuation tokens = higher likelihood."""
    return BigramModel(torch.zeros(VOCAB, VOCAB))


def says_no_model(tokenizer) -> BigramModel:
    """Always continues with " no": predicts its first token after anything, its second after the first."""
    first, second = tokenizer.encode(" no")
    table = torch.zeros(VOCAB, VOCAB)
    table[:, first] = 30.0
    table[first] = 0.0
    table[first, second] = 30.0
    return BigramModel(table)


def test_uniform_model_scores_are_minus_tokens_times_log_vocab(tiny_tokenizer):
    requests = [Request("Question: x\nAnswer:", " a"), Request("Question: x\nAnswer:", " the answer is here")]
    scores = score_requests(uniform_model(), tiny_tokenizer, requests)
    for request, (log_likelihood, greedy) in zip(requests, scores):
        tokens = len(tiny_tokenizer.encode(request.continuation))
        assert log_likelihood == pytest.approx(-tokens * math.log(VOCAB), abs=1e-4)
        assert greedy is False  # the uniform argmax is token 0 (EOS), never in these continuations


def test_tokenization_follows_lm_eval(tiny_tokenizer):
    """Trailing context whitespace moves into the continuation; the continuation is the tail of the whole
    encoding; an empty context becomes the BOS/EOS token."""
    from polycom.eval.scorer import encode_requests, encode_request

    assert encode_request(tiny_tokenizer, Request("The cat ", "sat")) == encode_request(
        tiny_tokenizer, Request("The cat", " sat"))
    context, continuation = encode_request(tiny_tokenizer, Request("Answer:", " yes"))
    assert context + continuation == tiny_tokenizer.encode("Answer: yes")
    assert context == tiny_tokenizer.encode("Answer:")
    eos = tiny_tokenizer.eos_token_id
    assert encode_request(tiny_tokenizer, Request("", " A sentence.")) == (
        [eos], tiny_tokenizer.encode(" A sentence."))


def test_acc_and_acc_norm_differ_when_answer_lengths_differ(tiny_tokenizer):
    """Under the uniform model " a" (1 token, 1 char) beats " the answer is here" (9 tokens) on the sum,
    but loses per character (9 tokens / 18 chars): acc picks choice 0, acc_norm choice 1."""
    short, long_ = "a", "the answer is here"
    assert len(tiny_tokenizer.encode(" " + short)) / len(short) > len(tiny_tokenizer.encode(" " + long_)) / len(long_)
    example = Example((Request("Question: x\nAnswer:", " " + short), Request("Question: x\nAnswer:", " " + long_)),
                      gold=1, answers=(short, long_))
    scores = score_requests(uniform_model(), tiny_tokenizer, list(example.requests))
    result = task_results(get_task("arc_easy"), [example, example], scores + scores)
    assert result["metrics"] == {"acc": 0.0, "acc_norm": 1.0}
    assert result["examples"] == [{"pred": 0, "pred_norm": 1, "gold": 1}] * 2


def test_acc_norm_divides_by_the_answer_text_length_without_the_delimiter():
    """lm-eval's acc_norm: log-likelihood / len(answer text), the leading space not counted.
    -2.0 / 2 < -3.9 / 4 picks choice 1; counting the space (-2.0 / 3 > -3.9 / 5) would pick choice 0."""
    example = Example((Request("q", " ab"), Request("q", " abcd")), gold=1, answers=("ab", "abcd"))
    result = task_results(get_task("piqa"), [example], [(-2.0, False), (-3.9, False)])
    assert result["examples"] == [{"pred": 0, "pred_norm": 1, "gold": 1}]


def test_rigged_model_accuracy_on_real_boolq(data_dir, tiny_tokenizer):
    """A model that always says "no" is right exactly on the rows whose answer is False."""
    limit = 30
    rows = datasets.load_from_disk(str(data_dir / "downstream" / "boolq" / "none" / "validation"))[:limit]
    expected = sum(not answer for answer in rows["answer"]) / limit
    assert 0 < expected < 1
    result = evaluate_tasks(says_no_model(tiny_tokenizer), tiny_tokenizer, ["boolq"], limit=limit,
                            data_dir=data_dir / "downstream", batch_size=7)["boolq"]
    assert result["metrics"]["acc"] == pytest.approx(expected)
    assert result["metrics"]["acc_norm"] == pytest.approx(expected)
    assert {e["pred"] for e in result["examples"]} == {0}
    assert [e["gold"] for e in result["examples"]] == [int(a) for a in rows["answer"]]
    no, yes = score_requests(says_no_model(tiny_tokenizer), tiny_tokenizer,
                             [Request("Is it?\nAnswer:", " no"), Request("Is it?\nAnswer:", " yes")])
    assert no[1] is True and no[0] > -1e-6  # greedy and near-certain
    assert yes[1] is False and yes[0] < -50


def test_lambada_perplexity_is_lm_eval_definition(data_dir, tiny_tokenizer):
    """perplexity = exp(-mean over passages of the last word's summed log-likelihood)."""
    limit = 6
    result = evaluate_tasks(uniform_model(), tiny_tokenizer, ["lambada"], limit=limit,
                            data_dir=data_dir / "downstream")["lambada"]
    path = data_dir / "downstream" / "lambada_openai" / "lambada_openai.jsonl"
    rows = [json.loads(line) for line in open(path)][:limit]
    mean_tokens = sum(len(tiny_tokenizer.encode(r["context"] + " " + r["continuation"]))
                      - len(tiny_tokenizer.encode(r["context"])) for r in rows) / limit
    assert result["metrics"]["perplexity"] == pytest.approx(math.exp(mean_tokens * math.log(VOCAB)), rel=1e-3)
    assert result["metrics"]["acc"] == 0.0
    assert len(result["examples"]) == limit and all(e["greedy"] is False for e in result["examples"])


def test_blimp_pairs_macro_averaged_over_paradigms_ties_half_right(data_dir, tiny_tokenizer):
    """Uniform model: a pair is right iff the good sentence has fewer tokens. Equal counts give equal scores up to
    float summation order: those that come out exactly equal are ties, half right and counted."""
    limit = 4
    result = evaluate_tasks(uniform_model(), tiny_tokenizer, ["blimp"], limit=limit,
                            data_dir=data_dir / "downstream", batch_size=32)["blimp"]
    records = iter(result["examples"])
    per_paradigm, equal_lengths = {}, 0
    for path in sorted((data_dir / "downstream" / "blimp").glob("*.jsonl")):
        right = 0.0
        for pair in [json.loads(line) for line in open(path)][:limit]:
            good, bad = (len(tiny_tokenizer.encode(" " + pair[k])) for k in ("sentence_good", "sentence_bad"))
            record = next(records)
            assert not record["tie"] or good == bad  # a tie needs equal scores: here, equal lengths
            equal_lengths += good == bad
            right += 0.5 if record["tie"] else float(good < bad if good != bad else record["pred"] == 0)
        per_paradigm[path.stem] = right / limit
    assert result["ties"] == sum(r["tie"] for r in result["examples"]) >= 0.9 * equal_lengths > 0
    assert {k: v["acc"] for k, v in result["groups"]["paradigm"].items()} == pytest.approx(per_paradigm)
    assert result["metrics"]["acc"] == pytest.approx(sum(per_paradigm.values()) / len(per_paradigm))
    assert result["n"] == 67 * limit and len(result["groups"]["phenomenon"]) == 13


def test_mmlu_headline_is_the_macro_average_over_subjects():
    """Subject a: 3 of 3 right, subject b: 0 of 1 -> macro 0.5 (a micro average would say 0.75)."""
    def example(subject):
        return Example((Request("q", " x"), Request("q", " y")), 0, ("x", "y"), {"subject": subject})

    examples = [example("a")] * 3 + [example("b")]
    scores = [(-1.0, False), (-2.0, False)] * 3 + [(-2.0, False), (-1.0, False)]
    result = task_results(get_task("mmlu"), examples, scores)
    assert result["groups"]["subject"] == {"a": {"acc": 1.0, "acc_norm": 1.0}, "b": {"acc": 0.0, "acc_norm": 0.0}}
    assert result["metrics"] == {"acc": 0.5, "acc_norm": 0.5}


def test_left_truncation_keeps_the_continuation(make_tiny_model, tiny_tokenizer):
    """A context longer than the window scores like its kept tail given directly."""
    model = make_tiny_model()
    context = " ".join(f"word{i} and more text" for i in range(40))
    continuation = " the end of it"
    context_ids = tiny_tokenizer.encode(context)
    continuation_ids = tiny_tokenizer.encode(context + continuation)[len(context_ids):]
    # a window whose kept context starts at a word boundary, so the kept text re-encodes to the same tokens
    window = next(w for w in range(40, 80) if tiny_tokenizer.convert_ids_to_tokens(
        context_ids[-(w + 1 - len(continuation_ids))]).startswith("Ġ"))
    kept = context_ids[-(window + 1 - len(continuation_ids)):]
    kept_text = tiny_tokenizer.decode(kept)
    assert tiny_tokenizer.encode(kept_text) == kept and len(context_ids) > 2 * window
    (truncated,) = score_requests(model, tiny_tokenizer, [Request(context, continuation)], max_length=window)
    (direct,) = score_requests(model, tiny_tokenizer, [Request(kept_text, continuation)])
    (full,) = score_requests(model, tiny_tokenizer, [Request(context, continuation)])
    assert truncated[0] == pytest.approx(direct[0], abs=1e-4)
    assert abs(full[0] - truncated[0]) > 1e-3  # the truncation really changed the input


def test_continuation_longer_than_the_window_is_an_error_naming_the_task(data_dir, make_tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="does not fit the model's window of 8"):
        score_requests(make_tiny_model(), tiny_tokenizer, [Request("a", " " + "word " * 20)], max_length=8)
    with pytest.raises(ValueError, match="^piqa: example 0 has a continuation of .* window of 16"):
        evaluate_tasks(make_tiny_model(), tiny_tokenizer, ["piqa"], limit=3, data_dir=data_dir / "downstream",
                       max_length=16, too_long="error")


def test_examples_with_an_answer_longer_than_the_window_are_left_out_and_counted(data_dir, make_tiny_model,
                                                                                 tiny_tokenizer):
    downstream, window = data_dir / "downstream", 24
    examples, _ = load_examples(get_task("piqa"), downstream, 40)
    too_long = [max(len(tokens) for _, tokens in encode_requests(tiny_tokenizer, e.requests)) > window
                for e in examples]
    assert 0 < sum(too_long) < 40  # the window is chosen so that some, not all, answers are too long
    result = evaluate_tasks(make_tiny_model(), tiny_tokenizer, ["piqa"], limit=40, data_dir=downstream,
                            max_length=window)["piqa"]
    assert result["too_long"] == sum(too_long) and result["n"] == 40 - sum(too_long)
    assert [e["gold"] for e in result["examples"]] == [e.gold for e, drop in zip(examples, too_long) if not drop]
    assert evaluate_tasks(make_tiny_model(), tiny_tokenizer, ["piqa"], limit=40,
                          data_dir=downstream)["piqa"]["too_long"] == 0


def real_requests(data_dir) -> list[Request]:
    """Mixed lengths, shared and distinct contexts, some longer than the tiny model's 256-token window."""
    requests = []
    for name, limit in (("arc_easy", 4), ("hellaswag", 3), ("boolq", 3), ("lambada", 3), ("winogrande", 2)):
        examples, _ = load_examples(get_task(name), data_dir / "downstream", limit)
        requests += [r for e in examples for r in e.requests]
    return requests


def test_batched_scoring_equals_one_at_a_time_in_the_given_order(data_dir, make_tiny_model, tiny_tokenizer):
    model = make_tiny_model()
    requests = real_requests(data_dir)
    one_by_one = score_requests(model, tiny_tokenizer, requests, batch_size=1)
    batched = score_requests(model, tiny_tokenizer, requests, batch_size=8)
    order = list(range(len(requests)))
    random.Random(0).shuffle(order)
    shuffled = score_requests(model, tiny_tokenizer, [requests[i] for i in order], batch_size=5)
    unshuffled = [None] * len(order)
    for position, index in enumerate(order):
        unshuffled[index] = shuffled[position]
    assert len({round(s, 3) for s, _ in one_by_one}) > len(requests) // 2  # distinct values: order is observable
    for reference, other, again in zip(one_by_one, batched, unshuffled):
        assert other[0] == pytest.approx(reference[0], abs=1e-4)
        assert again[0] == pytest.approx(reference[0], abs=1e-4)
        assert reference[1] == other[1] == again[1]


def test_scoring_is_deterministic_and_restores_train_mode(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model()
    requests = [Request("The cat sat on the", " mat"), Request("", " A whole sentence.")]
    reference = score_requests(model, tiny_tokenizer, requests)
    model.train()
    again = score_requests(model, tiny_tokenizer, requests)
    assert model.training
    assert again == reference
    assert all(p.grad is None for p in model.parameters())


WORKER = '''
import json, sys
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer
import polycom.model
from polycom.eval import Request, score_requests

folder = sys.argv[1]
accelerator = Accelerator(cpu=True)
model = AutoModelForCausalLM.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
requests = [Request(**r) for r in json.load(open(f"{folder}/requests.json"))]
scores = score_requests(model, tokenizer, requests, batch_size=3, accelerator=accelerator)
json.dump({"world": accelerator.num_processes, "scores": scores},
          open(f"{folder}/rank{accelerator.process_index}.json", "w"))
'''


@pytest.mark.slow
def test_two_processes_share_the_work_and_both_return_everything(tmp_path, data_dir, make_tiny_model, tiny_tokenizer):
    model = make_tiny_model()
    requests = real_requests(data_dir)[:13]  # odd count: the ranks' shares differ in size
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "requests.json").write_text(json.dumps([vars(r) for r in requests]))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(tmp_path / "worker.py"), str(tmp_path)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    expected = score_requests(model, tiny_tokenizer, requests)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["world"] == 2
        assert len(report["scores"]) == len(requests)
        for (got, greedy), (want, want_greedy) in zip(report["scores"], expected):
            assert got == pytest.approx(want, abs=1e-4) and greedy == want_greedy

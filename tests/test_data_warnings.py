"""Data problems are said, not silent: repeated training data (epochs in the log and summary, a warning), rows
skipped with data.bad_rows=skip (counted in the log and summary), and a validation split too small for
eval.val_tokens (an error whose advice works)."""

import json
import logging
import re

import pytest

from polycom.data import DataConfig, validation_blocks
from test_train import _losses, _train

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = ("The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill. " * 4).strip()


def _jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture
def validation_file(tmp_path):
    return _jsonl(tmp_path / "val.jsonl", [{"text": f"{i}: {TEXT}"} for i in range(40)])


def _local(train, validation) -> list:
    return ["data=local_jsonl", f"data.train_files=[{train}]", f"data.validation_files=[{validation}]",
            "eval.val_tokens=256", "trainer.max_steps=3", "trainer.log_interval=1", "trainer.checkpoint_interval=null",
            "trainer.save_hf=false"]


def test_training_data_smaller_than_the_budget_is_counted_and_warned_about(tmp_path, validation_file, caplog):
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "A single short training document."}])  # 33 characters
    with caplog.at_level(logging.WARNING):
        summary = _train(tmp_path / "run", _local(train, validation_file))
    assert re.search(r"the training data ran out by step 1 of 3: one pass holds \d+ tokens, so the budget of 3,072 "
                     r"tokens reads it ~\d+\.\d times", caplog.text), caplog.text
    epochs = [r["data/epoch"] for r in _losses(tmp_path / "run")]
    assert epochs == sorted(epochs) and epochs[0] > 10  # 1,024 tokens a step from a document of a few tokens
    data = summary["data"]
    assert data["epochs"] > 100 and data["epoch_tokens"] * data["epochs"] == pytest.approx(3 * 1024)


def test_rows_skipped_with_bad_rows_skip_are_counted_in_the_log_and_summary(tmp_path, validation_file):
    rows = [{"text": f"{i}: {TEXT}"} for i in range(30)]
    rows[3], rows[7] = '{"text": "torn', {"body": "no text field"}
    train = _jsonl(tmp_path / "train.jsonl", rows)
    summary = _train(tmp_path / "run", _local(train, validation_file) + ["data.bad_rows=skip"])
    last = _losses(tmp_path / "run")[-1]
    assert last["data/skipped_malformed"] >= 2
    assert summary["data"]["skipped_malformed"] == last["data/skipped_malformed"]
    assert summary["data"]["skipped_empty"] == 0
    assert "data/skipped_malformed" not in summary  # a diagnostic, not a result column of the study tables


def test_a_validation_split_smaller_than_one_block_is_not_told_to_lower_val_tokens(tmp_path, tiny_tokenizer):
    val = _jsonl(tmp_path / "val.jsonl", [{"text": "Too short."}])
    cfg = DataConfig(source="local", train_files=[str(val)], validation_files=[str(val)])
    with pytest.raises(ValueError) as err:
        validation_blocks(cfg, tiny_tokenizer, 32, num_blocks=1)  # eval.val_tokens cannot go below one block
    message = str(err.value)
    assert "lower eval.val_tokens" not in message and "less than one block" in message
    assert "data.validation_files" in message and "trainer.seq_len" in message
    validation_blocks(cfg, tiny_tokenizer, 2, num_blocks=1)  # the advice works: a smaller seq_len fits


def test_the_val_tokens_the_error_suggests_work(tmp_path, tiny_tokenizer):
    val = _jsonl(tmp_path / "val.jsonl", [{"text": TEXT}])
    cfg = DataConfig(source="local", train_files=[str(val)], validation_files=[str(val)], validation_fraction=0.0)
    with pytest.raises(ValueError) as err:
        validation_blocks(cfg, tiny_tokenizer, 16, num_blocks=1000)
    suggested = int(re.search(r"set eval\.val_tokens=(\d+)", str(err.value)).group(1))
    blocks = validation_blocks(cfg, tiny_tokenizer, 16, num_blocks=suggested // 16)
    assert blocks.numel() == suggested

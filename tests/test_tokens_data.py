"""Pretokenized data: scripts/pretokenize.py writes token shards (polycom.data.token_writer), data=tokens trains from
them in a seeded global block order with exact O(1) resume (polycom.data.tokens)."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydoc_data.topics import topics

from polycom.data import build_tokenizer, train_blocks, validation_blocks
from polycom.data import token_writer
from polycom.data.tokens import (BlockOrder, TokenBlockStream, TokenSplit, check_token_folder, load_tokenizer,
                                 read_index, token_dtype, tokenizer_hash, tokenizers_version)
from polycom.train.build import compose_config
from polycom.train.validate import ConfigError, validate_config
from scripts_loader import load_script
from test_train import SAME_LOSS, TINY, _losses, assert_same_losses

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = [topics[name] for name in sorted(topics)]  # 79 documents, 0.46 M characters


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def make_corpus(folder: Path) -> Path:
    """Two train files (with an empty document and a malformed row) and a validation file."""
    folder.mkdir()
    rows = [{"text": text} for text in TEXTS[8:]]
    rows.insert(3, {"text": "   "})
    rows.insert(10, {"body": "no text field"})
    write_jsonl(folder / "train-0.jsonl", rows[:30])
    write_jsonl(folder / "train-1.jsonl", rows[30:])
    write_jsonl(folder / "val.jsonl", [{"text": text} for text in TEXTS[:8]])
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "text")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("tokenizer") / "tiny-tokenizer"
    tiny_tokenizer.save_pretrained(folder)
    return folder


def data_overrides(corpus, tokenizer_dir=None):
    tok = ["tokenizer=gpt2", f"tokenizer.name={tokenizer_dir}"] if tokenizer_dir else []
    return ["data=local_jsonl", f"data.train_files=[{corpus}/train-*.jsonl]",
            f"data.validation_files=[{corpus}/val.jsonl]", "data.bad_rows=skip", *tok]


def files_of(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def tokens_cfg(path, extra=()):
    return compose_config(["data=tokens", f"data.path={path}", *extra])


def write_tokens(out: Path, corpus: Path, tokenizer_dir: Path) -> Path:
    token_writer.pretokenize(compose_config(data_overrides(corpus, tokenizer_dir)), out, workers=1, shard_tokens=20_000)
    return out


@pytest.fixture(scope="module")
def shared_tokens(tmp_path_factory, corpus, tokenizer_dir):
    """A pretokenized folder that tests only read."""
    return write_tokens(tmp_path_factory.mktemp("shared") / "tokens", corpus, tokenizer_dir)


@pytest.fixture
def pretokenized(tmp_path, corpus, tokenizer_dir):
    """A pretokenized folder of the test's own, to change."""
    return write_tokens(tmp_path / "tokens", corpus, tokenizer_dir)


# ------------------------------------------------------------------------------------------ writing

def test_shards_hold_each_document_tokenized_as_the_stream_does_with_its_boundaries(shared_tokens, tiny_tokenizer):
    index = read_index(shared_tokens)
    train = index["splits"]["train"]
    assert index["dtype"] == "uint16" and len(train["shards"]) > 2  # several shards of ~20k tokens
    assert index["tokenizer"]["hash"] == tokenizer_hash(tiny_tokenizer)
    assert (train["skipped_empty"], train["skipped_malformed"]) == (1, 1)
    assert np.fromfile(shared_tokens / train["shards"][0]["tokens"], dtype=np.uint16).size == \
        train["shards"][0]["num_tokens"]
    split = TokenSplit(shared_tokens, "train")
    ends = split.document_ends()
    starts = np.concatenate(([0], ends[:-1]))
    expected = [tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
                for text in TEXTS[8:]]
    assert len(ends) == train["num_documents"] == len(expected)
    for (start, end), ids in zip(zip(starts, ends), expected):
        assert split.read(int(start), int(end - start)).tolist() == ids
    assert split.num_tokens == train["num_tokens"] == sum(map(len, expected))


def test_files_do_not_depend_on_workers_and_a_killed_run_continues_to_the_same_files(tmp_path, corpus,
                                                                                     tokenizer_dir, monkeypatch):
    cfg = compose_config(data_overrides(corpus, tokenizer_dir))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    token_writer.pretokenize(cfg, straight, workers=1, shard_tokens=20_000)

    write_aside, calls = token_writer._write_aside, []

    def killed_on_the_fifth_file(path, write):
        calls.append(path)
        if len(calls) == 5:  # shard 2's tokens: shards 0 and 1 are written and recorded
            raise KeyboardInterrupt
        write_aside(path, write)

    monkeypatch.setattr(token_writer, "_write_aside", killed_on_the_fifth_file)
    with pytest.raises(KeyboardInterrupt):
        token_writer.pretokenize(cfg, resumed, workers=2, shard_tokens=20_000)
    monkeypatch.setattr(token_writer, "_write_aside", write_aside)
    with pytest.raises(ValueError, match="unfinished"):
        read_index(resumed)
    assert len(json.loads((resumed / "index.json").read_text())["splits"]["train"]["shards"]) == 2
    token_writer.pretokenize(cfg, resumed, workers=2, shard_tokens=20_000)
    assert files_of(resumed) == files_of(straight)


@pytest.mark.parametrize("max_train", [5_000, 20_000])  # the cap reached inside a shard; at a shard's end
def test_a_run_killed_after_its_token_cap_was_recorded_continues_to_the_same_files(tmp_path, corpus, tokenizer_dir,
                                                                                     monkeypatch, max_train):
    cfg = compose_config(data_overrides(corpus, tokenizer_dir))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    caps = {"train": max_train, "validation": 1_000}
    token_writer.pretokenize(cfg, straight, workers=1, shard_tokens=20_000, max_tokens=caps)

    write_index = token_writer._write_index

    def killed_marking_train_done(out, index):
        if index["splits"]["train"]["done"]:  # the write after the shard that reached the cap
            raise KeyboardInterrupt
        write_index(out, index)

    monkeypatch.setattr(token_writer, "_write_index", killed_marking_train_done)
    with pytest.raises(KeyboardInterrupt):
        token_writer.pretokenize(cfg, resumed, workers=1, shard_tokens=20_000, max_tokens=caps)
    monkeypatch.setattr(token_writer, "_write_index", write_index)
    train = json.loads((resumed / "index.json").read_text())["splits"]["train"]
    assert train["num_tokens"] >= max_train and not train["done"]
    token_writer.pretokenize(cfg, resumed, workers=1, shard_tokens=20_000, max_tokens=caps)
    assert files_of(resumed) == files_of(straight)


def test_a_run_killed_while_saving_the_tokenizer_continues(tmp_path, pretokenized, corpus, tokenizer_dir, monkeypatch):
    """The state a kill during the tokenizer's save leaves (a half-written temporary folder) is continued by the same
    command, to the files of an uninterrupted run; so is a folder holding only that (written before the index was)."""
    cfg = compose_config(data_overrides(corpus, tokenizer_dir))
    out = tmp_path / "killed"

    def killed_saving(tokenizer, folder):
        (folder.parent / ".tokenizer-x1y2z3").mkdir()
        (folder.parent / ".tokenizer-x1y2z3" / "tokenizer_config.json").write_text("{")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(token_writer, "_save_tokenizer", killed_saving)
        with pytest.raises(KeyboardInterrupt):
            token_writer.pretokenize(cfg, out, workers=1, shard_tokens=20_000)
    token_writer.pretokenize(cfg, out, workers=1, shard_tokens=20_000)
    assert files_of(out) == files_of(pretokenized)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["tokenizer"]

    only_leftovers = tmp_path / "only-leftovers"
    (only_leftovers / ".tokenizer-a1b2c3").mkdir(parents=True)
    (only_leftovers / ".index.json.tmp").write_text("{")
    token_writer.pretokenize(cfg, only_leftovers, workers=1, shard_tokens=20_000)
    assert files_of(only_leftovers) == files_of(pretokenized)
    (tmp_path / "not-ours").mkdir()
    (tmp_path / "not-ours" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no index.json"):
        token_writer.pretokenize(cfg, tmp_path / "not-ours", workers=1, shard_tokens=20_000)


def sparse_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer of 4 entries whose ids go up to 70,000: its length is no bound on its ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "<eos>": 1, "[UNK]": 2, "b": 70_000}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(folder)
    return folder


def test_the_token_dtype_holds_the_largest_id_and_an_id_beyond_it_is_a_clear_error(tmp_path):
    assert (token_dtype(1 << 16), token_dtype((1 << 16) + 1)) == (np.uint16, np.uint32)  # ids 0..65535 fit uint16
    tokenizer = sparse_tokenizer(tmp_path / "sparse")
    corpus = tmp_path / "text"
    corpus.mkdir()
    write_jsonl(corpus / "train.jsonl", [{"text": "a b a"}, {"text": "b c"}])
    write_jsonl(corpus / "val.jsonl", [{"text": "b"}])
    overrides = ["data=local_jsonl", f"data.train_files=[{corpus}/train.jsonl]",
                 f"data.validation_files=[{corpus}/val.jsonl]", "tokenizer=gpt2", f"tokenizer.name={tokenizer}"]
    index = token_writer.pretokenize(compose_config(overrides), tmp_path / "tokens", workers=1)
    assert index["dtype"] == "uint32"
    assert TokenSplit(tmp_path / "tokens", "train").read(0, 7).tolist() == [0, 70_000, 0, 1, 70_000, 2, 1]

    token_writer._init_worker(str(tokenizer), "sparse-words", "text", "error", "uint16", pooled=False)
    with pytest.raises(ValueError, match="tokenizer sparse-words gave token id 70000, which uint16"):
        token_writer._encode_chunk(["a b"])


def test_a_folder_is_never_written_with_another_tokenizer_or_data(tmp_path, pretokenized, corpus, tokenizer_dir,
                                                                   tiny_tokenizer):
    other = tmp_path / "other-tokenizer"
    tiny_tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match=r"other source \(tokenizer\.name"):
        token_writer.pretokenize(compose_config(data_overrides(corpus, other)), pretokenized, workers=1,
                                 shard_tokens=20_000)
    with pytest.raises(ValueError, match=r"other settings \(shard_tokens"):
        token_writer.pretokenize(compose_config(data_overrides(corpus, tokenizer_dir)), pretokenized, workers=1,
                                 shard_tokens=10_000)
    # the same config, but the tokenizer behind its name changed: the hash tells
    index = json.loads((pretokenized / "index.json").read_text())
    index["complete"] = False
    index["tokenizer"]["hash"] = "0" * 64
    (pretokenized / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="another tokenizer") as error:
        token_writer.pretokenize(compose_config(data_overrides(corpus, tokenizer_dir)), pretokenized, workers=1,
                                 shard_tokens=20_000)
    assert "is installed" not in str(error.value)  # the same tokenizers release: no hint
    index["tokenizer"]["tokenizers_version"] = "0.0.1"
    (pretokenized / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"another tokenizer .*written with tokenizers 0\.0\.1 but "
                                         rf"{tokenizers_version()} is installed"):
        token_writer.pretokenize(compose_config(data_overrides(corpus, tokenizer_dir)), pretokenized, workers=1,
                                 shard_tokens=20_000)


def test_a_hash_mismatch_names_another_tokenizers_release_as_the_likely_cause(pretokenized):
    cfg = tokens_cfg(pretokenized)
    index = json.loads((pretokenized / "index.json").read_text())
    assert index["tokenizer"]["tokenizers_version"] == tokenizers_version()
    index["tokenizer"]["hash"] = "0" * 64  # as if this release serialized the saved tokenizer differently
    (pretokenized / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="hash differs") as error:
        load_tokenizer(cfg.data)
    assert "is installed" not in str(error.value)
    index["tokenizer"]["tokenizers_version"] = "0.0.1"
    (pretokenized / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"hash differs .*written with tokenizers 0\.0\.1 but "
                                         rf"{tokenizers_version()} is installed: .*likely cause"):
        load_tokenizer(cfg.data)


def test_max_tokens_writes_a_prefix_and_the_script_names_the_train_command(tmp_path, corpus, tokenizer_dir, capsys):
    out = tmp_path / "prefix"
    pretokenize = load_script("pretokenize")
    index = pretokenize.main([*data_overrides(corpus, tokenizer_dir), "--out", str(out), "--workers", "1",
                              "--max-train-tokens", "5e3", "--max-validation-tokens", "1000"])
    train = index["splits"]["train"]
    assert 5_000 <= train["num_tokens"] < 5_000 + max(np.diff(TokenSplit(out, "train").document_ends(), prepend=0))
    assert 1_000 <= index["splits"]["validation"]["num_tokens"] < 10_000
    assert f"data=tokens data.path={out}" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["hub", "embedded"])
def test_any_source_is_pretokenized_in_source_order(tmp_path, tokenizer_dir, tiny_tokenizer, monkeypatch, source):
    """A Hub dataset (a local stand-in: this machine has no Hub access) and the embedded corpus, prefixes."""
    import datasets

    from polycom.data.packing import encode_documents
    from polycom.data.sources import text_stream

    overrides = ["tokenizer=gpt2", f"tokenizer.name={tokenizer_dir}"]
    if source == "hub":
        stories = tmp_path / "stories.jsonl"
        write_jsonl(stories, [{"story": text} for text in TEXTS])
        load_dataset = datasets.load_dataset
        monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: load_dataset(
            "json", data_files=[str(stories)], split="train", streaming=True))
        overrides += ["data.source=hub", "data.name=org/stories", "data.validation_split=null",
                      "data.validation_fraction=0.2", "data.text_field=story"]
    cfg = compose_config(overrides)
    index = token_writer.pretokenize(cfg, tmp_path / "tokens", workers=1, max_tokens={"train": 20_000,
                                                                                       "validation": 3_000})
    for split in ("train", "validation"):
        written = TokenSplit(tmp_path / "tokens", split).read(0, index["splits"][split]["num_tokens"])
        documents = (ids for row in text_stream(cfg.data, split)
                     for ids in encode_documents([row["text"]], tiny_tokenizer, "text", "error") if ids)
        expected = []
        while len(expected) < len(written):
            expected += next(documents)
        assert written.tolist() == expected


# ------------------------------------------------------------------------------------------ reading

def test_validation_blocks_equal_the_streaming_paths(shared_tokens, corpus, tokenizer_dir, tiny_tokenizer):
    streaming = compose_config(data_overrides(corpus, tokenizer_dir))
    tokens = tokens_cfg(shared_tokens, ["tokenizer=gpt2", f"tokenizer.name={tokenizer_dir}"])
    expected = validation_blocks(streaming.data, tiny_tokenizer, 64, 30)
    assert torch.equal(validation_blocks(tokens.data, build_tokenizer(tokens.tokenizer, tokens.data), 64, 30), expected)
    with pytest.raises(ValueError, match=r"eval.val_tokens=.*pretokenize more validation data"):
        validation_blocks(tokens.data, tiny_tokenizer, 64, 10_000)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_block_order_is_a_permutation_that_changes_with_seed_and_epoch(n):
    order = BlockOrder(n, seed=3)
    first = order(0, np.arange(n))
    assert sorted(first.tolist()) == list(range(n))
    assert order(0, np.arange(n)[::-1]).tolist() == first[::-1].tolist()  # per index, not per call
    if n >= 64:
        assert not np.array_equal(first, np.arange(n))
        assert not np.array_equal(order(1, np.arange(n)), first)
        assert not np.array_equal(BlockOrder(n, seed=4)(0, np.arange(n)), first)


def test_a_block_order_keeps_no_reference_to_itself_beyond_its_life():
    """Its round keys are cached per instance: an order no longer used is freed (a cache on the class kept it)."""
    import gc
    import weakref

    order = BlockOrder(1000, seed=3)
    first = order(0, np.arange(1000))
    assert np.array_equal(order(0, np.arange(1000)), first)
    assert np.array_equal(order(1, np.arange(5)), BlockOrder(1000, seed=3)(1, np.arange(5)))
    alive = weakref.ref(order)
    del order
    gc.collect()
    assert alive() is None


def take(stream, k):
    return torch.stack([next(stream) for _ in range(k)])


def test_each_epoch_reads_every_block_once_in_its_own_order_and_is_logged(shared_tokens, caplog):
    cfg = tokens_cfg(shared_tokens)
    split = TokenSplit(shared_tokens, "train")
    n = split.num_tokens // 32
    all_blocks = torch.from_numpy(split.read(0, n * 32).reshape(n, 32))
    stream = train_blocks(cfg.data, None, 32, seed=5)
    with caplog.at_level(logging.WARNING):
        epoch0, epoch1 = take(stream, n), take(stream, n)
    for epoch in (epoch0, epoch1):
        assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, all_blocks.tolist()))
    assert not torch.equal(epoch0, epoch1) and stream.epoch == 1
    assert stream.first_epoch_tokens == n * 32
    assert [r.message for r in caplog.records if "epoch 1 begins" in r.message]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_are_disjoint_and_together_read_the_single_process_order(shared_tokens, world):
    cfg = tokens_cfg(shared_tokens)
    single = take(train_blocks(cfg.data, None, 32, seed=1), 12 * world)
    ranks = [take(train_blocks(cfg.data, None, 32, seed=1, rank=r, world_size=world), 12) for r in range(world)]
    # rank r's i-th block is global position i * world + r: a global batch holds the same sequences at any world size
    interleaved = torch.stack([ranks[i % world][i // world] for i in range(12 * world)])
    assert torch.equal(interleaved, single)


@pytest.mark.parametrize("start", [0, 1, 37, 1000, 2345])
def test_a_stream_resumed_at_block_b_reads_only_what_it_yields_next(shared_tokens, start):
    cfg = tokens_cfg(shared_tokens)
    fresh = take(train_blocks(cfg.data, None, 32, seed=2, rank=1, world_size=2), start + 40)
    resumed = train_blocks(cfg.data, None, 32, seed=2, rank=1, world_size=2, start_block=start)
    assert torch.equal(take(resumed, 40), fresh[start:])
    assert resumed.tokens.blocks_read == resumed._chunk_blocks  # one read-ahead, whatever the start
    assert resumed.blocks_emitted == start + 40


def test_resume_far_into_a_long_run_costs_one_read(shared_tokens):
    cfg = tokens_cfg(shared_tokens)
    stream = TokenBlockStream(cfg.data, 32, seed=0, start_block=10**12)
    block = next(stream)
    assert stream.tokens.blocks_read == stream._chunk_blocks and stream.epoch > 10**8
    order = BlockOrder(stream.num_blocks, 0)
    epoch, index = divmod(10**12, stream.num_blocks)
    assert block.tolist() == stream.tokens.read(int(order(epoch, np.array([index]))[0]) * 32, 32).tolist()


# ------------------------------------------------------------------------------------------ config

def test_data_tokens_config_errors_name_the_key(tmp_path, pretokenized):
    with pytest.raises(ConfigError, match="data.path is not set"):
        validate_config(compose_config(TINY + ["data=tokens"]))
    with pytest.raises(ConfigError, match=r"data.path=.*no index.json"):
        validate_config(compose_config(TINY + ["data=tokens", f"data.path={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"tokenizer.kind='bpe', but data.path=.* tokenizer.kind='pretrained'"):
        validate_config(compose_config(TINY + ["data=tokens", f"data.path={pretokenized}"]))
    docs = pretokenized / "train-00000.docs.npy"
    docs.rename(docs.with_suffix(".bak"))
    with pytest.raises(ValueError, match=r"train-00000.docs.npy \(the document ends of train-00000.bin\) should hold "
                                         r"\d+ offsets but is missing"):
        check_token_folder(tokens_cfg(pretokenized).data)
    np.save(docs, np.load(docs.with_suffix(".bak"))[:-1])  # one document short
    with pytest.raises(ValueError, match=r"train-00000.docs.npy .* but is \(\d+,\)"):
        check_token_folder(tokens_cfg(pretokenized).data)
    docs.with_suffix(".bak").rename(docs)
    (pretokenized / "train-00001.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ConfigError, match="train-00001.bin should hold"):
        validate_config(compose_config(TINY + ["data=tokens", f"data.path={pretokenized}", "tokenizer=gpt2",
                                               f"tokenizer.name={read_index(pretokenized)['source']['tokenizer']['name']}"]))


# ------------------------------------------------------------------------------------------ training

def test_a_data_tokens_run_resumes_exactly_with_the_text_gone(tmp_path):
    """The losses of a run stopped at step 6 and resumed after deleting the text and the tokenizer cache equal
    those of the straight run."""
    corpus = make_corpus(tmp_path / "text")
    cache = tmp_path / "tokenizer-cache"
    text = data_overrides(corpus) + [f"tokenizer.cache_dir={cache}", "tokenizer.vocab_size=512",
                                     "tokenizer.train_chars=2000000"]
    folder = tmp_path / "tokens"
    token_writer.pretokenize(compose_config(text), folder, workers=1, shard_tokens=30_000)
    run = TINY + ["data=tokens", f"data.path={folder}", "trainer.max_steps=12", "trainer.log_interval=1",
                  "trainer.checkpoint_interval=100", "eval.interval=100", "trainer.save_hf=false"]
    from polycom.train.trainer import train

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(compose_config(run), straight)
    train(compose_config(run + ["trainer.stop_after=6"]), resumed)
    shutil.rmtree(corpus)
    shutil.rmtree(cache)
    summary = train(compose_config(run + ["trainer.resume=auto"]), resumed)
    assert_same_losses(resumed, straight, 12)
    assert summary["steps"] == 12 and summary["complete"]
    reference = json.loads((straight / "summary.json").read_text())
    assert abs(summary["val_loss"] - reference["val_loss"]) <= SAME_LOSS
    assert _losses(straight)[-1]["loss"] < _losses(straight)[0]["loss"]


@pytest.mark.slow
def test_two_processes_train_on_the_global_batches_of_one(tmp_path):
    """Process r reads positions r, r + 2, ...: a step's global batch is the same blocks at any world size, so a DDP run
    on two processes gives the losses of a one-process run with no special data order."""
    from polycom.train.trainer import train
    from test_distributed import CONFIG_LAUNCH, _records, _run

    corpus = make_corpus(tmp_path / "text")
    folder = tmp_path / "tokens"
    token_writer.pretokenize(compose_config(data_overrides(corpus) + [f"tokenizer.cache_dir={tmp_path / 'cache'}",
                                                                      "tokenizer.vocab_size=512"]),
                             folder, workers=1, shard_tokens=30_000)
    run = TINY + ["data=tokens", f"data.path={folder}", "trainer.max_steps=6", "trainer.log_interval=1",
                  "eval.interval=3", "trainer.checkpoint_interval=100", "trainer.save_hf=false",
                  "trainer.micro_batch_size=2"]
    train(compose_config(run), tmp_path / "one")
    _run([*CONFIG_LAUNCH, "train.py", *run, f"hydra.run.dir={tmp_path / 'two'}"])
    two = _records(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    for key in ("loss", "val_loss"):
        want = {r["step"]: r[key] for r in _losses(tmp_path / "one") if key in r}
        got = {r["step"]: r[key] for r in two if key in r}
        assert set(got) == set(want) and len(want) >= 2, key
        for step in want:
            assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (key, step)

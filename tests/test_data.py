"""Data pipeline: sources, tokenizers, packing, sharding, resume, config checks (polycom.data)."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf
from pydoc_data.topics import topics

from polycom.data.sources import split_document
from polycom.data import (
    EOS,
    DataConfig,
    TokenizerConfig,
    batched,
    build_tokenizer,
    embedded_corpus,
    embedded_documents,
    is_held_out,
    padded_vocab_size,
    text_stream,
    train_blocks,
    train_stream,
    validate_data_config,
    validation_blocks,
)
from polycom.data import embedded, tokenizer as tokenizer_module

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real text of different lengths (most longer than one block): the interpreter's documentation topics.
DOCS = [topics[name][: 300 + 50 * i] for i, name in enumerate(sorted(topics)[:24])]


# ---------------------------------------------------------------------------------------------- helpers

def write_jsonl(path: Path, texts, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": i, field: text}) + "\n")
    return path


def write_corpus(folder: Path, fmt: str, texts, field: str) -> str:
    """Write ``texts`` as files of format ``fmt`` under ``folder``; return a glob matching them."""
    folder.mkdir()
    if fmt == "jsonl":
        half = len(texts) // 2
        write_jsonl(folder / "part-0.jsonl", texts[:half], field)
        write_jsonl(folder / "part-1.jsonl", texts[half:], field)
        return str(folder / "*.jsonl")
    if fmt == "txt":  # one document per file
        for i, text in enumerate(texts):
            (folder / f"doc-{i:03d}.txt").write_text(text, encoding="utf-8", newline="")
        return str(folder / "*.txt")
    if fmt == "parquet":
        half = len(texts) // 2
        for i, part in enumerate((texts[:half], texts[half:])):
            pq.write_table(pa.table({"id": list(range(len(part))), field: part}), folder / f"part-{i}.parquet")
        return str(folder / "*.parquet")
    raise ValueError(fmt)


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def split_on_eos(blocks, eos):
    """Complete documents (tuples of token ids, EOS removed) and the trailing incomplete one."""
    pieces, current = [], []
    for token in torch.cat(list(blocks)).tolist():
        if token == eos:
            pieces.append(tuple(current))
            current = []
        else:
            current.append(token)
    return pieces, current


def assert_packs_documents(blocks, documents, eos):
    """The blocks are the documents (each + EOS) concatenated in some order, cut into blocks, no padding."""
    pieces, _ = split_on_eos(blocks, eos)
    expected = Counter(tuple(d) for d in documents)
    assert not Counter(pieces) - expected, "a block holds a sequence that is not a whole document"
    order = list(pieces) + list((expected - Counter(pieces)).elements())
    concatenation = [t for doc in order for t in list(doc) + [eos]]
    flat = torch.cat(list(blocks)).tolist()
    assert len(order) == len(documents)
    assert flat == concatenation[: len(flat)]
    assert len(concatenation) - len(flat) < blocks[0].numel(), "tokens were dropped before the epoch's end"


def compose(overrides):
    from polycom.train.build import compose_config

    return compose_config(overrides)


# ------------------------------------------------------------------------------------- local formats

# parquet takes ~5 s more: datasets sleeps 5 s when a threaded parquet stream ends (apache/arrow#45214)
@pytest.mark.parametrize("fmt", ["jsonl", "txt", "parquet"])
def test_local_files_stream_and_pack_every_token_in_order(tmp_path, tiny_tokenizer, fmt):
    # empty documents are skipped (an empty file is a config error, so txt gets only a blank one)
    texts = DOCS + (["  \n\t "] if fmt == "txt" else ["", "  \n\t "])
    pattern = write_corpus(tmp_path / fmt, fmt, texts, field="body")
    cfg = DataConfig(source="local", train_files=[pattern], validation_files=[pattern], text_field="body",
                     shuffle_buffer=8, tokenize_batch_size=5)
    validate_data_config(cfg)
    documents = [encode(tiny_tokenizer, t) for t in DOCS]
    eos = tiny_tokenizer.eos_token_id
    seq_len = 64
    epoch_blocks = sum(len(d) + 1 for d in documents) // seq_len

    stream = train_blocks(cfg, tiny_tokenizer, seq_len, seed=0)
    blocks = [next(stream) for _ in range(epoch_blocks)]

    assert all(b.shape == (seq_len,) and b.dtype == torch.long for b in blocks)
    assert_packs_documents(blocks, documents, eos)
    assert stream.epoch == 0 and stream.blocks_emitted == epoch_blocks


def test_stats_count_documents_tokens_and_skipped_empty(tmp_path, tiny_tokenizer):
    long_doc = DOCS[-1]
    path = write_jsonl(tmp_path / "d.jsonl", ["", "   \n", long_doc, DOCS[0]])
    cfg = DataConfig(source="local", train_files=[str(path)], shuffle_buffer=1)  # buffer 1 keeps file order
    stream = train_blocks(cfg, tiny_tokenizer, seq_len=64, seed=0)
    next(stream)
    assert (stream.stats.documents, stream.stats.skipped_empty, stream.stats.tokens) == (
        1, 2, len(encode(tiny_tokenizer, long_doc)) + 1)


def test_a_document_that_is_not_a_string_names_the_field(tmp_path, tiny_tokenizer):
    with open(tmp_path / "d.jsonl", "w") as f:
        f.write(json.dumps({"body": "fine text"}) + "\n" + json.dumps({"body": None}) + "\n")
    cfg = DataConfig(source="local", train_files=[str(tmp_path / "d.jsonl")], text_field="body")
    with pytest.raises(TypeError, match="data.text_field='body'.*NoneType"):
        next(train_blocks(cfg, tiny_tokenizer, seq_len=8, seed=0))


def test_batched_stacks_consecutive_blocks_and_drops_the_rest():
    blocks = [torch.full((4,), i) for i in range(5)]
    batches = list(batched(iter(blocks), 2))
    assert [b.shape for b in batches] == [(2, 4), (2, 4)]
    assert torch.equal(torch.cat(batches), torch.stack(blocks[:4]))


# ------------------------------------------------------------------------------------------ gutenberg

@pytest.fixture(scope="module")
def gutenberg_cfg(data_dir):
    root = OmegaConf.create({"paths": {"data_dir": str(data_dir)}})
    yaml = OmegaConf.load(REPO_ROOT / "configs/data/gutenberg.yaml")
    root.data = OmegaConf.merge(OmegaConf.structured(DataConfig), yaml)
    validate_data_config(root.data)
    root.data.tokenize_batch_size = 1  # one book per tokenizer call: the first blocks come sooner
    return root.data


@pytest.fixture(scope="module")
def gutenberg_books(data_dir):
    books = {}
    for split in ("train", "validation"):
        books[split] = {}
        for path in sorted((data_dir / "corpus/gutenberg").glob(f"{split}-*.jsonl")):
            for line in path.open(encoding="utf-8"):
                record = json.loads(line)
                books[split][record["id"]] = record["text"]
    return books


def decoded_pieces(tokenizer, blocks):
    """The decoded text between EOS tokens; the last piece loses a few characters that a block cut may
    have split inside a multi-byte character."""
    pieces = tokenizer.decode(torch.cat(list(blocks))).split(EOS)
    pieces[-1] = pieces[-1][:-4]
    return [p for p in pieces if p]


def test_gutenberg_train_blocks_are_book_text(gutenberg_cfg, gutenberg_books, tiny_tokenizer):
    stream = train_blocks(gutenberg_cfg, tiny_tokenizer, 128, seed=0)
    blocks = [next(stream) for _ in range(16)]
    pieces = decoded_pieces(tiny_tokenizer, blocks)
    assert sum(map(len, pieces)) > 2000
    for piece in pieces:
        assert any(piece in book for book in gutenberg_books["train"].values())


def test_gutenberg_books_are_cut_into_pieces_so_the_first_blocks_mix_many_books(gutenberg_cfg, gutenberg_books,
                                                                                tiny_tokenizer):
    stream = train_blocks(gutenberg_cfg, tiny_tokenizer, 128, seed=0)
    pieces = decoded_pieces(tiny_tokenizer, [next(stream) for _ in range(256)])
    books = {next(name for name, book in gutenberg_books["train"].items() if piece in book) for piece in pieces[:-1]}
    assert len(books) >= 5  # ~65k characters; whole books would give one or two books
    assert all(len(piece) <= gutenberg_cfg.max_document_chars for piece in pieces)


@pytest.mark.parametrize("text,limit,expected", [
    ("short", 10, ["short"]),
    ("aaaa\n\nbbbb\n\ncccc", 10, ["aaaa\n\n", "bbbb\n\ncccc"]),  # at blank lines
    ("aaaa\n\nbbbb\n\ncccc", 8, ["aaaa\n\n", "bbbb\n\n", "cccc"]),
    ("aaaa\nbbbb\ncccc", 10, ["aaaa\nbbbb\n", "cccc"]),  # no blank line in reach: at a line break
    ("abcdefghijklmnop", 6, ["abcdef", "ghijkl", "mnop"]),  # no break at all: anywhere
])
def test_split_document_cuts_at_paragraphs_and_keeps_every_character(text, limit, expected):
    assert split_document(text, limit) == expected
    assert split_document(None, 4) == [None]  # a malformed row passes through to be counted


def test_max_document_chars_must_be_positive():
    with pytest.raises(ValueError, match="data.max_document_chars"):
        validate_data_config(OmegaConf.merge(OmegaConf.structured(DataConfig), {"max_document_chars": 0}))


def test_gutenberg_validation_blocks_are_the_held_out_books(gutenberg_cfg, gutenberg_books, tiny_tokenizer):
    assert set(gutenberg_books["validation"]) == {"pg35", "pg36", "pg120", "pg174", "pg219", "pg768", "pg1661"}
    first = validation_blocks(gutenberg_cfg, tiny_tokenizer, 128, num_blocks=48)
    second = validation_blocks(gutenberg_cfg, tiny_tokenizer, 128, num_blocks=48)
    assert first.shape == (48, 128) and torch.equal(first, second)
    pieces = decoded_pieces(tiny_tokenizer, first)
    assert sum(map(len, pieces)) > 9_000
    for piece in pieces:
        assert any(piece in book for book in gutenberg_books["validation"].values())
        assert not any(piece in book for book in gutenberg_books["train"].values())
    # the books' pieces are interleaved: ~10k characters already span two books, in the files' order
    books = [next(n for n, b in gutenberg_books["validation"].items() if p in b) for p in pieces]
    assert books[0] == "pg35" and len(set(books)) == 2


# ------------------------------------------------------------------------------------------- embedded

def test_embedded_corpus_is_the_stdlib_split_by_file():
    train, validation = embedded_documents("train"), embedded_documents("validation")
    files = set(embedded.stdlib_files())
    assert len(files) > 300 and validation
    assert set(train).isdisjoint(validation)
    assert set(validation) | {d for d in train if d in files} == files
    assert any(d.startswith("pydoc_data.topics:") for d in train)
    for doc_id in files:
        parts = doc_id.split("/")[:-1]
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__", "pydoc_data"} & set(parts), doc_id
    assert sum(len(embedded.read_document(d)) for d in validation) >= 200_000
    assert len(validation) >= 0.02 * len(files)
    texts = [row["text"] for row in embedded_corpus("validation")]
    assert texts == [(embedded.stdlib_root() / d).read_text(encoding="utf-8") for d in validation]


def test_embedded_split_is_the_same_in_another_process():
    code = "from polycom.data.embedded import embedded_documents as d; print(d('validation'))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(embedded_documents("validation"))


# ------------------------------------------------------------------------------------------- sharding

@pytest.mark.parametrize("num_files", [1, 4])  # 1 file: split by document; 4 files: split by file
def test_ranks_see_disjoint_documents_that_cover_the_stream(tmp_path, tiny_tokenizer, num_files):
    per_file = len(DOCS) // num_files
    paths = [write_jsonl(tmp_path / f"d{i}.jsonl", DOCS[i * per_file:(i + 1) * per_file]) for i in range(num_files)]
    cfg = DataConfig(source="local", train_files=[str(p) for p in paths], shuffle_buffer=6)
    ranks = [[row["text"] for row in train_stream(cfg, seed=3, rank=r, world_size=2)] for r in (0, 1)]
    assert ranks[0] and ranks[1]
    assert set(ranks[0]).isdisjoint(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(DOCS)
    for rank in (0, 1):  # the block stream of a rank starts with that rank's first document
        block = next(train_blocks(cfg, tiny_tokenizer, 16, seed=3, rank=rank, world_size=2))
        assert block.tolist() == encode(tiny_tokenizer, ranks[rank][0])[:16]


# ----------------------------------------------------------------------------------- resume, epochs

@pytest.fixture
def small_corpus(tmp_path):
    texts = [topics[name][:120] for name in sorted(topics)[:10]]
    return DataConfig(source="local", train_files=[str(write_jsonl(tmp_path / "d.jsonl", texts))], shuffle_buffer=4)


def test_stream_is_infinite_deterministic_and_reshuffled_each_epoch(small_corpus, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    stream = train_blocks(small_corpus, tiny_tokenizer, 32, seed=5)
    blocks = [next(stream) for _ in range(60)]
    assert stream.epoch >= 2
    again = train_blocks(small_corpus, tiny_tokenizer, 32, seed=5)
    assert all(torch.equal(a, next(again)) for a in blocks)
    other_seed = train_blocks(small_corpus, tiny_tokenizer, 32, seed=6)
    assert not all(torch.equal(a, next(other_seed)) for a in blocks)
    pieces, _ = split_on_eos(blocks, eos)
    epoch0, epoch1 = pieces[:10], pieces[10:20]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1


@pytest.mark.parametrize("start", [1, 9, 17, 31])
def test_resume_at_block_n_equals_skipping_n_blocks(small_corpus, tiny_tokenizer, start):
    fresh = train_blocks(small_corpus, tiny_tokenizer, 32, seed=5)
    expected = [next(fresh) for _ in range(45)]
    assert fresh.epoch >= 1  # the resumed range crosses epoch boundaries
    resumed = train_blocks(small_corpus, tiny_tokenizer, 32, seed=5, start_block=start)
    got = [next(resumed) for _ in range(45 - start)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected[start:]))
    assert resumed.blocks_emitted == fresh.blocks_emitted == 45


# ----------------------------------------------------------------------------------------- validation

def test_validation_blocks_are_the_first_blocks_in_file_order(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "val.jsonl", DOCS)
    cfg = DataConfig(source="local", train_files=[str(path)], validation_files=[str(path)])
    eos = tiny_tokenizer.eos_token_id
    flat = [t for text in DOCS for t in encode(tiny_tokenizer, text) + [eos]]
    blocks = validation_blocks(cfg, tiny_tokenizer, 32, num_blocks=10)
    assert blocks.shape == (10, 32) and blocks.flatten().tolist() == flat[:320]
    available = len(flat) // 32
    with pytest.raises(ValueError, match=f"eval.val_tokens: .* only {available} blocks"):
        validation_blocks(cfg, tiny_tokenizer, 32, num_blocks=available + 1)


def test_validation_fraction_holds_out_a_fixed_disjoint_subset(tmp_path):
    texts = [f"Document {i}. " + topics[name][:200] for i, name in enumerate(sorted(topics) * 3)]
    paths = [write_jsonl(tmp_path / "a.jsonl", texts[:100]), write_jsonl(tmp_path / "b.jsonl", texts[100:])]
    cfg = DataConfig(source="local", train_files=[str(p) for p in paths], validation_fraction=0.2)
    validate_data_config(cfg)
    train = [row["text"] for row in text_stream(cfg, "train")]
    validation = [row["text"] for row in text_stream(cfg, "validation")]
    assert set(train).isdisjoint(validation) and sorted(train + validation) == sorted(texts)
    assert 0.1 * len(texts) < len(validation) < 0.3 * len(texts)
    assert validation == [t for t in texts if is_held_out(t, 0.2)]


# ------------------------------------------------------------------------------------------------ hub

def test_hub_source_streams_with_load_dataset(monkeypatch, tmp_path):
    """Hub and local share one load_dataset call; here the Hub is replaced by a local file."""
    import datasets

    stories = write_jsonl(tmp_path / "stories.jsonl", DOCS[:6], field="story")
    load_dataset, calls = datasets.load_dataset, []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return load_dataset("json", data_files=[str(stories)], split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(source="hub", name="org/stories", config_name="small", validation_split=None,
                     validation_fraction=0.5, text_field="story")
    validate_data_config(cfg)
    validation = [row for row in text_stream(cfg, "validation")]
    assert calls == [("org/stories", "small", {"split": "train", "streaming": True})]
    assert all(set(row) == {"text"} for row in validation)
    assert [row["text"] for row in validation] == [t for t in DOCS[:6] if is_held_out(t, 0.5)]


# ------------------------------------------------------------------------------------------ tokenizer

def test_bpe_round_trips_and_is_cached(tmp_path, monkeypatch):
    tok_cfg = TokenizerConfig(kind="bpe", vocab_size=512, train_chars=100_000, cache_dir=str(tmp_path / "tok"))
    data_cfg = DataConfig(source="embedded")
    tok = build_tokenizer(tok_cfg, data_cfg)
    assert len(tok) == 512
    assert tok.eos_token == tok.bos_token == tok.pad_token == tok.unk_token == EOS
    text = "def f(x):\n\treturn x ** 2  # ünïcödé → 😀\n\n"
    ids = encode(tok, text)
    assert tok.decode(ids) == text and tok.eos_token_id not in ids
    cached = [p for p in (tmp_path / "tok").iterdir()]
    assert len(cached) == 1 and (cached[0] / "tokenizer.json").is_file()  # no temporary folder left

    def must_not_train(*args, **kwargs):
        raise AssertionError("retrained instead of loading the cache")

    monkeypatch.setattr(tokenizer_module, "train_bpe", must_not_train)
    assert build_tokenizer(tok_cfg, data_cfg).get_vocab() == tok.get_vocab()
    with pytest.raises(AssertionError, match="retrained"):  # other settings, other cache entry
        build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=400, train_chars=100_000,
                                        cache_dir=tok_cfg.cache_dir), data_cfg)


def test_bpe_fingerprint_depends_on_text_and_settings():
    base = tokenizer_module.bpe_fingerprint(["abc", "def"], 512)
    assert base == tokenizer_module.bpe_fingerprint(["abc", "def"], 512)
    assert base != tokenizer_module.bpe_fingerprint(["abcd", "ef"], 512)
    assert base != tokenizer_module.bpe_fingerprint(["abc", "def"], 1024)


def test_cache_write_keeps_the_first_complete_folder(tmp_path, tiny_tokenizer):
    folder = tmp_path / "abc"
    tiny_tokenizer.save_pretrained(folder)  # another process won the race
    before = (folder / "tokenizer.json").read_bytes()
    other = tokenizer_module.train_bpe(["some other text"] * 10, 300)
    tokenizer_module._save_atomically(other, {}, folder)
    assert (folder / "tokenizer.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]


def test_padded_vocab_size_rounds_up_to_64(tmp_path, tiny_tokenizer):
    assert padded_vocab_size(tiny_tokenizer) == 512
    tiny_tokenizer.save_pretrained(tmp_path)
    grown = build_tokenizer(TokenizerConfig(kind="pretrained", name=str(tmp_path)), DataConfig())
    grown.add_tokens(["alpha_1", "alpha_2", "alpha_3"])
    assert len(grown) == 515 and padded_vocab_size(grown) == 576


def test_pretrained_tokenizer_from_a_local_folder(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    tok = build_tokenizer(TokenizerConfig(kind="pretrained", name=str(tmp_path / "tok")), DataConfig())
    assert encode(tok, DOCS[3]) == encode(tiny_tokenizer, DOCS[3])
    assert tok.eos_token_id == tiny_tokenizer.eos_token_id


def test_pretrained_tokenizer_without_eos_gets_one(tmp_path):
    from transformers import PreTrainedTokenizerFast

    bare = tokenizer_module.train_bpe(DOCS, 300)
    PreTrainedTokenizerFast(tokenizer_object=bare.backend_tokenizer).save_pretrained(tmp_path / "bare")
    tok = build_tokenizer(TokenizerConfig(kind="pretrained", name=str(tmp_path / "bare")), DataConfig())
    assert tok.eos_token == EOS and tok.eos_token_id is not None


# ------------------------------------------------------------------------------------- config checks

def test_validate_rejects_an_unknown_source():
    with pytest.raises(ValueError, match="data.source='foo' is not one of embedded, local, hub"):
        validate_data_config(DataConfig(source="foo"))


def test_validate_names_a_pattern_that_matches_nothing(tmp_path):
    pattern = str(tmp_path / "missing-*.jsonl")
    with pytest.raises(ValueError, match=re.escape(f"data.train_files: no file matches '{pattern}'")):
        validate_data_config(DataConfig(source="local", train_files=[pattern], validation_fraction=0.1))


def test_validate_names_an_empty_file(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", DOCS[:2])
    (tmp_path / "val.jsonl").touch()
    cfg = DataConfig(source="local", train_files=[str(train)], validation_files=[str(tmp_path / "val.jsonl")])
    with pytest.raises(ValueError, match=re.escape(f"data.validation_files: {tmp_path / 'val.jsonl'} is empty")):
        validate_data_config(cfg)


def test_validate_names_a_missing_text_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", DOCS[:2], field="content")
    with pytest.raises(ValueError, match=re.escape(f"data.text_field='body' not found in {path}")):
        validate_data_config(DataConfig(source="local", train_files=[str(path)], text_field="body",
                                        validation_fraction=0.1))


def test_validate_requires_validation_data_and_a_hub_name(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", DOCS[:2])
    with pytest.raises(ValueError, match="data.validation_files is empty and data.validation_fraction is 0"):
        validate_data_config(DataConfig(source="local", train_files=[str(path)]))
    with pytest.raises(ValueError, match="data.validation_fraction=0.1 would be ignored"):
        validate_data_config(DataConfig(source="hub", name="org/x", validation_fraction=0.1))
    with pytest.raises(ValueError, match="data.name"):
        validate_data_config(DataConfig(source="hub"))


def test_gutenberg_without_a_data_directory_says_to_set_polycom_data_dir():
    cfg = compose(["data=gutenberg", "paths.data_dir=null"])
    with pytest.raises(ValueError, match="data.train_files: .*POLYCOM_DATA_DIR"):
        validate_data_config(cfg.data)


def test_every_data_and_tokenizer_group_composes(data_dir):
    for name in sorted(p.stem for p in (REPO_ROOT / "configs/data").glob("*.yaml")):
        cfg = compose([f"data={name}", f"paths.data_dir={data_dir}"])
        if name not in ("local_jsonl", "tokens"):  # templates: the user supplies train_files / path
            validate_data_config(cfg.data)
    assert compose(["data=gutenberg", f"paths.data_dir={data_dir}"]).data.train_files == [
        f"{data_dir}/corpus/gutenberg/train-*.jsonl"]
    assert compose(["tokenizer=gpt2"]).tokenizer.kind == "pretrained"
    bpe = compose(["tokenizer=bpe", "paths.cache_dir=/x"]).tokenizer
    assert (bpe.kind, bpe.vocab_size, bpe.cache_dir) == ("bpe", 8192, "/x/tokenizers")


def test_count_tokens_counts_each_split_as_the_trainer_tokenizes_it(tmp_path):
    from polycom.data import build_tokenizer
    from polycom.train.build import compose_config
    from scripts_loader import load_script

    docs = {"train": ["The first document of the corpus.", "   ", "A second, longer document " * 5],
            "validation": ["Held out text."]}
    for split, texts in docs.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    overrides = ["data=local_jsonl", f"data.train_files=[{tmp_path}/train.jsonl]",
                 f"data.validation_files=[{tmp_path}/validation.jsonl]", "tokenizer.vocab_size=300",
                 f"tokenizer.cache_dir={tmp_path}/tok"]
    counts = load_script("count_tokens").count(overrides)
    cfg = compose_config(overrides)
    tok = build_tokenizer(cfg.tokenizer, cfg.data)
    for split, texts in docs.items():  # tokens + one end-of-text per non-empty document; every character
        want = sum(len(tok(t, add_special_tokens=False).input_ids) + 1 for t in texts if t.strip())
        assert counts[split] == (want, sum(len(t) for t in texts))

"""Pre-tokenized data (``data=tokens data.path=DIR``): token shards written by ``scripts/pretokenize.py``, read
through memory maps, and a training order of fixed-length blocks that costs the same at any position.

The folder holds ``index.json`` (format, dtype, the tokenizer's name and hash, the data and tokenizer config it
was made from, and per split its shards with token and document counts), the tokenizer itself (``tokenizer/``,
so a run needs no text at all), and per split ``<split>-<k>.bin`` (the tokens of consecutive documents in source
order, each document followed by EOS, raw ``uint16`` when the vocabulary fits, else ``uint32``) with
``<split>-<k>.docs.npy`` (the end offset of each document in the shard: the document boundaries).

Training order (:class:`TokenBlockStream`): the train split is one long token sequence cut into
``N = tokens // seq_len`` blocks (the tail shorter than a block is never trained). Global position ``p`` is
block ``order(epoch, p mod N)`` of epoch ``p // N``, where ``order`` is a seeded permutation of ``0..N-1``
computed per index (:class:`BlockOrder`, a Feistel network: no table, O(1) memory and time per lookup).
Rank ``r`` of ``w`` reads positions ``r, r + w, r + 2w, ...``, so the ranks are disjoint and together read
every position once, for any world size; the ``G`` sequences of global step ``s`` are positions ``sG..sG+G-1``
whatever the world size. Resuming at block ``b`` of a rank computes its next positions and reads only them.

Validation: the first blocks of the validation split in source order, packed as the streaming path packs them
(``validation_blocks``), so the same tokenizer gives the same validation blocks from either path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from polycom.data.packing import PipelineStats

log = logging.getLogger(__name__)

FORMAT = "polycom-tokens-v1"
INDEX = "index.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "validation")
CHUNK_TOKENS = 1 << 18  # tokens a training stream reads ahead in one vectorized gather (1 MB as uint32)
_ORDER_SALT = 0x706F6C79  # keeps the block order's random stream apart from other uses of the same seed


def token_dtype(id_bound: int) -> np.dtype:
    """``uint16`` when every token id is below ``id_bound`` <= 65,536 (ids 0..65535), else ``uint32``."""
    return np.dtype(np.uint16 if id_bound <= 1 << 16 else np.uint32)


def token_id_bound(tokenizer) -> int:
    """One more than the largest token id of ``tokenizer`` (added tokens included). Not ``len(tokenizer)``, which
    counts the entries: a vocabulary with gaps in its ids has a larger id than its length."""
    return max(tokenizer.get_vocab().values()) + 1


def tokenizer_hash(tokenizer) -> str:
    """SHA-256 of the tokenizer's full serialization (vocabulary, merges, normalizer, special tokens) and its EOS.

    The serialization is the ``tokenizers`` library's (``to_str``), which another release of it may write
    differently: the writer records ``tokenizers.__version__`` in the index, and :func:`hash_mismatch_hint` names
    a differing version as the likely cause of a mismatch."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(str(tokenizer.eos_token).encode())
    return digest.hexdigest()


def tokenizers_version() -> str:
    import tokenizers

    return tokenizers.__version__


def hash_mismatch_hint(index: dict) -> str:
    """For an error on a tokenizer hash that differs from ``index``'s: when the folder was written under another
    ``tokenizers`` release than the one installed, that (its serialization changed) rather than another tokenizer;
    else ``""``."""
    written = index["tokenizer"].get("tokenizers_version")
    if written is None or written == tokenizers_version():
        return ""
    return (f"; the folder was written with tokenizers {written} but {tokenizers_version()} is installed: a "
            f"different serialization of the same tokenizer is the likely cause (install tokenizers=={written} "
            "to use this folder)")


# --------------------------------------------------------------------------------------------- the folder

def read_index(path, key: str = "data.path") -> dict:
    """The ``index.json`` of a finished pretokenization; ``ValueError`` naming ``key`` when there is none."""
    if not path:
        raise ValueError(f"{key} is not set: give the folder written by scripts/pretokenize.py --out "
                         "(README: Pre-tokenized data)")
    folder = Path(path)
    index_file = folder / INDEX
    if not index_file.is_file():
        raise ValueError(f"{key}={path}: no {INDEX} there; write the folder with `python scripts/pretokenize.py "
                         f"<data and tokenizer overrides> --out {path}`")
    index = json.loads(index_file.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{key}={path}: {INDEX} has format {index.get('format')!r}, not {FORMAT!r}")
    if not index.get("complete"):
        raise ValueError(f"{key}={path}: the pretokenization is unfinished (killed?); run the same "
                         "scripts/pretokenize.py command again to complete it")
    return index


def check_token_folder(data_cfg, tok_cfg=None) -> dict:
    """Every file the index names exists with the size it records, and the tokenizer config (when given) is the
    one the folder was written with: one tokenizer per run, never a mix. Reads no tokens. Returns the index."""
    index = read_index(data_cfg.path)
    folder = Path(data_cfg.path)
    dtype = np.dtype(index["dtype"])
    for split in SPLITS:
        if split not in index["splits"] or not index["splits"][split]["shards"]:
            raise ValueError(f"data.path={folder}: holds no {split} tokens")
        for shard in index["splits"][split]["shards"]:
            file = folder / shard["tokens"]
            expected = shard["num_tokens"] * dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                found = f"{file.stat().st_size} bytes" if file.is_file() else "missing"
                raise ValueError(f"data.path={folder}: {shard['tokens']} should hold {expected} bytes but is {found}; "
                                 "run scripts/pretokenize.py again into a new folder")
            docs = folder / shard["documents"]
            try:
                found = np.load(docs, mmap_mode="r").shape if docs.is_file() else "missing"  # reads the header only
            except (OSError, ValueError) as err:
                found = f"unreadable ({err})"
            if found != (shard["num_documents"],):
                raise ValueError(f"data.path={folder}: {shard['documents']} (the document ends of {shard['tokens']}) "
                                 f"should hold {shard['num_documents']} offsets but is {found}; run "
                                 "scripts/pretokenize.py again into a new folder")
    if not (folder / TOKENIZER_DIR / "tokenizer.json").is_file():
        raise ValueError(f"data.path={folder}: the tokenizer ({TOKENIZER_DIR}/) is missing")
    if tok_cfg is not None:
        _check_tokenizer_config(index, tok_cfg, folder)
    return index


def _check_tokenizer_config(index: dict, tok_cfg, folder: Path) -> None:
    """The run's ``tokenizer`` settings must name the tokenizer the folder holds (kind, and vocabulary size or name):
    the folder's tokenizer is the one used, and a config claiming another would be recorded wrongly."""
    written = index["source"]["tokenizer"]
    keys = ["kind"] + (["vocab_size"] if written["kind"] == "bpe" else ["name"])
    for key in keys:
        if tok_cfg[key] != written[key]:
            raise ValueError(f"tokenizer.{key}={tok_cfg[key]!r}, but data.path={folder} was tokenized with "
                             f"tokenizer.{key}={written[key]!r} ({index['tokenizer']['name']}); set tokenizer.{key}="
                             f"{written[key]} or pretokenize again with this tokenizer")


def load_tokenizer(data_cfg, tok_cfg=None):
    """The tokenizer the folder was written with (saved in it), checked against the index's hash."""
    from transformers import AutoTokenizer

    index = check_token_folder(data_cfg, tok_cfg)
    tokenizer = AutoTokenizer.from_pretrained(Path(data_cfg.path) / TOKENIZER_DIR)
    if tokenizer_hash(tokenizer) != index["tokenizer"]["hash"]:
        raise ValueError(f"data.path={data_cfg.path}: {TOKENIZER_DIR}/ does not hash to the tokenizer the tokens were "
                         f"written with (hash differs from {INDEX}){hash_mismatch_hint(index)}; else pretokenize again "
                         "into a new folder")
    log.info("data=tokens: %s, tokenizer %s (%d tokens, hash %s)", data_cfg.path, index["tokenizer"]["name"],
             len(tokenizer), index["tokenizer"]["hash"][:12])
    return tokenizer


class TokenSplit:
    """The shards of one split as one long token sequence, memory-mapped: reading a slice touches only its pages."""

    def __init__(self, folder, split: str, index: Optional[dict] = None):
        folder = Path(folder)
        index = index if index is not None else read_index(folder)
        self.dtype = np.dtype(index["dtype"])
        shards = index["splits"][split]["shards"]
        self.shards = [np.memmap(folder / s["tokens"], dtype=self.dtype, mode="r") for s in shards]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])  # first token of each shard, then the total
        self.num_tokens = int(self.offsets[-1])
        self.folder, self._docs = folder, [s["documents"] for s in shards]
        self.blocks_read = 0  # blocks (rows) read so far, for tests and benchmarks

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``start .. start+length-1`` as int64 (they may span shards)."""
        return self.read_blocks(np.array([start], dtype=np.int64), length)[0]

    def read_blocks(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``(len(starts), length)`` int64: the tokens from each start; one gather per shard."""
        starts = np.asarray(starts, dtype=np.int64)
        if len(starts) and (starts.min() < 0 or starts.max() + length > self.num_tokens):
            raise IndexError(f"token range outside 0..{self.num_tokens}")
        first = np.searchsorted(self.offsets, starts, side="right") - 1
        last = np.searchsorted(self.offsets, starts + length - 1, side="right") - 1
        out = np.empty((len(starts), length), dtype=np.int64)
        inside = first == last
        for shard in np.unique(first[inside]):
            rows = np.nonzero(inside & (first == shard))[0]
            # a (tokens - length + 1, length) view of the shard; taking rows of it copies just those windows
            windows = sliding_window_view(np.asarray(self.shards[shard]), length)
            out[rows] = windows[starts[rows] - self.offsets[shard]]
        for row in np.nonzero(~inside)[0]:  # a block across a shard boundary: piece by piece
            position, filled = int(starts[row]), 0
            for shard in range(first[row], last[row] + 1):
                local = position + filled - int(self.offsets[shard])
                piece = self.shards[shard][local: local + length - filled]
                out[row, filled: filled + len(piece)] = piece
                filled += len(piece)
        self.blocks_read += len(starts)
        return out

    def document_ends(self) -> np.ndarray:
        """The end offset (exclusive) of every document in the split's token sequence: the document boundaries."""
        ends = [np.load(self.folder / docs) + offset for docs, offset in zip(self._docs, self.offsets[:-1])]
        return np.concatenate(ends)


# ------------------------------------------------------------------------------------------- the order

_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a well-mixed 64-bit hash of each element (uint64 arrays wrap on overflow)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


class BlockOrder:
    """A seeded permutation of ``0..n-1`` per epoch, evaluated per index in O(1): a Feistel network on ``2h`` bits,
    the smallest even number covering ``0..n-1`` (a bijection of ``0..2^(2h)-1``, a domain of ``n`` to ``4(n-1)``
    entries for n >= 2), with cycle-walking: an index encrypted outside ``0..n-1`` is encrypted again until it
    lands inside. Encryptions per index average at most domain/n: 1 when ``n`` is a power of 4, close to 4 just
    above one (measured over 3 seeds x 3 epochs: n=17 2.9-3.8, n=65 3.7-3.9, n=4097 and 65,537 4.0), with a long
    tail (single indices took up to 50 encryptions at n=4097, 58 at n=2^20+1). Every epoch has its own keys, so its
    own order; existing runs' orders depend on these exact rounds, keys and walk: do not change them."""

    ROUNDS = 6

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError(f"BlockOrder needs at least one block, got {n}")
        self.n, self.seed = n, seed
        self._half = max(1, ((n - 1).bit_length() + 1) // 2)
        self._mask = np.uint64((1 << self._half) - 1)
        self._epoch_keys: dict = {}  # the round keys of the last few epochs asked for

    def _keys(self, epoch: int) -> np.ndarray:
        if epoch not in self._epoch_keys:
            if len(self._epoch_keys) >= 4:
                del self._epoch_keys[next(iter(self._epoch_keys))]  # the oldest
            self._epoch_keys[epoch] = np.random.SeedSequence([_ORDER_SALT, self.seed % (1 << 63), epoch]) \
                .generate_state(self.ROUNDS, dtype=np.uint64)
        return self._epoch_keys[epoch]

    def _encrypt(self, x: np.ndarray, keys: np.ndarray) -> np.ndarray:
        half = np.uint64(self._half)
        left, right = x >> half, x & self._mask
        for key in keys:
            left, right = right, left ^ (_mix(right ^ key) & self._mask)
        return (left << half) | right

    def __call__(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        """The blocks at ``indices`` (each in ``0..n-1``) of ``epoch``'s order, as int64."""
        keys = self._keys(epoch)
        y = self._encrypt(np.asarray(indices, dtype=np.uint64), keys)
        outside = y >= self.n
        while outside.any():
            y[outside] = self._encrypt(y[outside], keys)
            outside = y >= self.n
        return y.astype(np.int64)


# ------------------------------------------------------------------------------------------- the streams

class TokenBlockStream:
    """The infinite training stream of one rank over a pretokenized folder: ``(seq_len,)`` LongTensors.

    Has what the trainer and its hooks read of a streaming ``BlockStream``: ``blocks_emitted`` (the position to
    record), ``epoch`` (of the last block emitted), ``first_epoch_tokens`` (this rank's share of one pass, set once
    the rank has read into a second pass) and ``stats``. ``start_block=b`` yields what a fresh stream yields from
    its (b+1)-th block on, reading nothing before it."""

    def __init__(self, data_cfg, seq_len: int, seed: int, rank: int = 0, world_size: int = 1, start_block: int = 0):
        if start_block < 0:
            raise ValueError(f"start_block={start_block} must be >= 0")
        index = read_index(data_cfg.path)
        self.tokens = TokenSplit(data_cfg.path, "train", index)
        self.num_blocks = self.tokens.num_tokens // seq_len
        if self.num_blocks < 1:
            raise ValueError(f"data.path={data_cfg.path}: the train split holds {self.tokens.num_tokens} tokens, "
                             f"less than one block of trainer.seq_len={seq_len}")
        self.seq_len, self.rank, self.world_size = seq_len, rank, world_size
        self.order = BlockOrder(self.num_blocks, seed)
        self.blocks_emitted = start_block
        self.epoch = self._epoch_of(start_block - 1) if start_block else 0
        self.first_epoch_tokens: Optional[int] = self._pass_tokens() if self.epoch > 0 else None
        self._next_epoch_block = self._first_block_of(self.epoch + 1)
        self._chunk_blocks = max(1, CHUNK_TOKENS // seq_len)
        self._rows: list = []
        self._cursor = 0
        if rank == 0:
            log.info("data=tokens: %s train tokens = %s blocks of %d; %s starts at block %s (epoch %d)%s",
                     f"{self.tokens.num_tokens:,}", f"{self.num_blocks:,}", seq_len,
                     "rank 0" if world_size > 1 else "the stream", f"{start_block:,}", self._epoch_of(start_block),
                     f"; each of {world_size} ranks reads every {world_size}th position" if world_size > 1 else "")

    @property
    def stats(self) -> PipelineStats:
        """Tokens read so far (the documents were counted, and empty or malformed rows skipped, when writing)."""
        return PipelineStats(tokens=self.blocks_emitted * self.seq_len)

    def _position(self, block):
        return block * self.world_size + self.rank

    def _epoch_of(self, block: int) -> int:
        return self._position(block) // self.num_blocks

    def _first_block_of(self, epoch: int) -> int:
        """This rank's first block whose position is in ``epoch``."""
        return max(0, -(-(epoch * self.num_blocks - self.rank) // self.world_size))

    def _pass_tokens(self) -> int:
        return self.num_blocks * self.seq_len // self.world_size

    def state_dict(self) -> None:
        """Nothing beyond ``blocks_emitted``, which the trainer records as the step: a resume is a seek."""
        return None

    def __iter__(self) -> "TokenBlockStream":
        return self

    def __next__(self) -> torch.Tensor:
        if self._cursor == len(self._rows):
            self._read_ahead()
        block = self._rows[self._cursor]
        self._cursor += 1
        self.blocks_emitted += 1
        if self.blocks_emitted > self._next_epoch_block:
            self._new_epoch(self._epoch_of(self.blocks_emitted - 1))
        return block

    def _read_ahead(self) -> None:
        """The next ``_chunk_blocks`` blocks of this rank in one gather."""
        positions = self._position(np.arange(self.blocks_emitted, self.blocks_emitted + self._chunk_blocks,
                                             dtype=np.int64))
        epochs, indices = np.divmod(positions, self.num_blocks)
        blocks = np.empty_like(indices)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            blocks[where] = self.order(int(epoch), indices[where])
        self._rows = list(torch.from_numpy(self.tokens.read_blocks(blocks * self.seq_len, self.seq_len)).unbind(0))
        self._cursor = 0

    def _new_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._next_epoch_block = self._first_block_of(epoch + 1)
        if self.first_epoch_tokens is None:
            self.first_epoch_tokens = self._pass_tokens()
        if self.rank == 0:
            log.warning("data=tokens: epoch %d begins at block %s of rank 0: the %s blocks of %s are read again, in "
                        "a new order (seed %d, epoch %d)", epoch, f"{self.blocks_emitted - 1:,}",
                        f"{self.num_blocks:,}", self.tokens.folder, self.order.seed, epoch)


def token_train_blocks(data_cfg, seq_len: int, seed: int, rank: int = 0, world_size: int = 1,
                       start_block: int = 0) -> TokenBlockStream:
    return TokenBlockStream(data_cfg, seq_len, seed, rank, world_size, start_block)


def token_validation_blocks(data_cfg, seq_len: int, num_blocks: int) -> torch.Tensor:
    """The first ``num_blocks`` blocks of the validation split, in source order. Shape ``(num_blocks, seq_len)``."""
    split = TokenSplit(data_cfg.path, "validation")
    available = split.num_tokens // seq_len
    if available < num_blocks:
        fix = (f"set eval.val_tokens={available * seq_len} (or less), or " if available else "give a smaller "
               "trainer.seq_len, or ")
        raise ValueError(f"eval.val_tokens: the validation tokens of data.path={data_cfg.path} hold only {available} "
                         f"blocks of {seq_len} tokens ({split.num_tokens} tokens), but {num_blocks} blocks were asked "
                         f"for; {fix}pretokenize more validation data (scripts/pretokenize.py --max-validation-tokens)")
    return torch.from_numpy(split.read(0, num_blocks * seq_len).reshape(num_blocks, seq_len))

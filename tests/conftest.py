"""Test-wide environment: no network, no W&B, caches in a temporary folder, one data directory."""
import os
import tempfile
from pathlib import Path

import pytest

_CACHE = tempfile.mkdtemp(prefix="polycom-test-cache-")
os.environ.setdefault("HF_HOME", os.path.join(_CACHE, "hf"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("POLYCOM_CACHE_DIR", os.path.join(_CACHE, "polycom"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Subprocesses (torchrun workers, train.py, scripts/) import this checkout's polycom, not whichever checkout an
# editable install in a shared venv last pointed at.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture
def one_thread():
    """Tiny models run many small ops; with two threads on shared cores each op waits for a descheduled
    OpenMP peer (2-3x slower under load). One thread keeps such tests fast; results do not depend on it.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder. Missing data is a failure, never a skip."""
    value = os.environ.get("POLYCOM_DATA_DIR")
    if not value:
        pytest.fail("POLYCOM_DATA_DIR is not set: point it at the shared data folder (../shared/data)")
    path = Path(value)
    if not (path / "downstream").is_dir() or not (path / "corpus").is_dir():
        pytest.fail(f"POLYCOM_DATA_DIR={path} does not hold downstream/ and corpus/")
    return path


def _train_tiny_tokenizer(vocab_size: int = 512):
    """A small byte-level BPE trained on the interpreter's own documentation (no data directory needed)."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(topics.values()), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=eos, pad_token=eos)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _train_tiny_tokenizer()


@pytest.fixture
def make_tiny_model(tiny_tokenizer):
    """Factory for a randomly initialised tiny PolyCom model matching ``tiny_tokenizer``."""
    import torch

    from polycom.model import PolyComConfig, PolyComForCausalLM

    def make(activation: str = "polynorm", seed: int = 0, **overrides):
        torch.manual_seed(seed)
        kwargs = dict(
            vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=256, activation=activation, eos_token_id=tiny_tokenizer.eos_token_id,
            bos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.eos_token_id,
        )
        kwargs.update(overrides)
        return PolyComForCausalLM(PolyComConfig.matched(**kwargs)).eval()

    return make

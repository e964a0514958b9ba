"""What a training step costs beyond its arithmetic: host synchronisations, batch copies, loss memory.

A host sync is any call that makes the host wait for the device's result: ``.item()``, ``bool()``, ``int()``,
``float()`` of a device tensor (all reach ``aten._local_scalar_dense``), ``.tolist()`` / ``.numpy()``, and ops
whose output size depends on the data (``nonzero``, ``bincount``, ``unique``, ``masked_select``,
``repeat_interleave`` without an output size, ``equal``). On CPU nothing waits, but the calls are the same ones
that stall a CUDA step, so counting them here (a ``TorchFunctionMode`` for the Python-level reads, a
``TorchDispatchMode`` for the aten ones) pins the GPU behaviour without a GPU.
"""

import collections
import math

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from polycom.model.losses import chunked_cross_entropy
from polycom.model.modeling import causal_lm_loss
from polycom.train.step import to_device, train_step

pytestmark = pytest.mark.usefixtures("one_thread")

SYNC_OPS = {"_local_scalar_dense", "nonzero", "bincount", "_unique", "_unique2", "unique_dim", "unique_consecutive",
            "masked_select", "repeat_interleave", "equal"}
SYNC_METHODS = {"tolist", "numpy", "__array__"}


class _SyncCounter:
    """Counts host syncs (see the module docstring) while active, except while ``paused``."""

    def __init__(self):
        self.counts = collections.Counter()
        self.paused = False
        counter = self

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func._schema.name.split("::")[-1]
                if name in SYNC_OPS and not counter.paused:
                    counter.counts[name] += 1
                return func(*args, **(kwargs or {}))

        class Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if getattr(func, "__name__", "") in SYNC_METHODS and not counter.paused:
                    counter.counts[func.__name__] += 1
                return func(*args, **(kwargs or {}))

        self.modes = (Function(), Dispatch())

    def __enter__(self):
        for mode in self.modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self.modes):
            mode.__exit__(*exc)

    @property
    def total(self):
        return sum(self.counts.values())


MODELS = {
    "dense-polynorm": dict(activation="polynorm"),
    "dense-swiglu": dict(activation="swiglu"),
    "moe-polynorm": dict(activation="polynorm", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64),
    "moe-swiglu": dict(activation="swiglu", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64),
    "moe-polynorm-per-expert": dict(activation="polynorm", num_experts=4, num_experts_per_tok=2,
                                    moe_intermediate_size=64, moe_shared_coefficients=False),
}


def _prepared(make_tiny_model, overrides):
    model = make_tiny_model(**overrides).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, accelerator


@pytest.mark.parametrize("name", list(MODELS))
def test_a_training_step_syncs_the_host_once(make_tiny_model, name):
    """Budget: one sync per optimizer step, the non-finite check that decides whether to update (the hooks need
    that answer on the host every step). Forward, backward, loss, clipping and the MoE dispatch (counted once, no
    ``bincount``, grouped_mm offsets on the device) add none. Not counted: inside ``optimizer.step()``, where
    AdamW reads its step counters -- CPU tensors even when the model is on a GPU, so no device sync there.
    Per-expert PolyCom coefficients (``moe_shared_coefficients=False``) slice the experts' rows on the host:
    one ``tolist`` per MoE layer and micro-batch, documented in ``polycom/model/moe.py``."""
    model, optimizer, accelerator = _prepared(make_tiny_model, MODELS[name])
    gen = torch.Generator().manual_seed(0)
    micro_batches = [torch.randint(0, 512, (2, 24), generator=gen) for _ in range(2)]
    train_step(model, optimizer, accelerator, micro_batches, grad_clip=1.0)  # warm-up: optimizer state, kernels
    counter = _SyncCounter()
    step = optimizer.step

    def step_not_counted(*args, **kwargs):
        counter.paused = True
        try:
            return step(*args, **kwargs)
        finally:
            counter.paused = False

    optimizer.step = step_not_counted
    with counter:
        result = train_step(model, optimizer, accelerator, micro_batches, grad_clip=1.0)
    assert result.finite
    budget = 1
    if not MODELS[name].get("moe_shared_coefficients", True):
        budget += model.config.num_hidden_layers * len(micro_batches)
    assert counter.total == budget, dict(counter.counts)


def test_a_nonfinite_step_is_skipped_and_reported(make_tiny_model):
    """The single sync keeps the semantics: a NaN loss skips the update (parameters unchanged, gradients
    cleared) and is reported; a finite step updates."""
    model, optimizer, accelerator = _prepared(make_tiny_model, MODELS["dense-polynorm"])
    batch = [torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))]
    head = model.lm_head.weight
    original = head[0, 0].item()
    with torch.no_grad():
        head[0, 0] = float("nan")
    snapshot = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, optimizer, accelerator, batch, grad_clip=1.0)
    assert not result.finite and not math.isfinite(result.lm_loss.item())
    assert all(p.grad is None for p in model.parameters())
    for p, before in zip(model.parameters(), snapshot):
        torch.testing.assert_close(p.detach(), before, equal_nan=True, rtol=0, atol=0)
    with torch.no_grad():
        head[0, 0] = original
    result = train_step(model, optimizer, accelerator, batch, grad_clip=1.0)
    assert result.finite and math.isfinite(result.grad_norm.item())
    assert sum(not torch.equal(p, before) for p, before in zip(model.parameters(), snapshot)) > 1


def test_expert_counts_are_computed_once_per_layer(make_tiny_model):
    """One count of the routed slots per MoE layer feeds the dispatch, the balance loss and the logged load
    (it used to be three ``bincount`` calls, each a host sync on CUDA)."""
    model = make_tiny_model(**MODELS["moe-polynorm"]).train()
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    counted = collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counted[func._schema.name.split("::")[-1].rstrip("_")] += 1  # in-place ops too
            return func(*args, **(kwargs or {}))

    with Count():
        out = model(input_ids=ids, labels=ids)
    layers = model.config.num_hidden_layers
    assert counted["scatter_add"] + counted["bincount"] + counted["histc"] == layers, counted
    assert out.expert_load.shape == (layers, 4)
    torch.testing.assert_close(out.expert_load.sum(-1), torch.ones(layers))


def test_experts_run_in_the_autocast_dtype(make_tiny_model):
    """Under autocast the expert input is cast to the autocast dtype before the grouped matmuls (on CUDA only
    bf16 takes ``grouped_mm``; an fp32 input fell back to the Python loop, one host sync per layer)."""
    model = make_tiny_model(**MODELS["moe-polynorm"]).train()
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.name.split("::")[-1] in ("_grouped_mm", "mm"):
                seen.append((func._schema.name.split("::")[-1], args[0].dtype))
            return func(*args, **(kwargs or {}))

    with torch.autocast("cpu", dtype=torch.bfloat16), Watch():
        out = model(input_ids=ids, labels=ids)
    grouped = [dtype for name, dtype in seen if name == "_grouped_mm"]
    assert len(grouped) == 2 * model.config.num_hidden_layers  # up and down projections: one call each
    assert set(grouped) == {torch.bfloat16}
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_to_device_is_a_plain_copy_on_cpu():
    batch = torch.arange(12).reshape(3, 4)
    moved = to_device(batch, torch.device("cpu"))
    assert moved is batch  # .to() of a CPU tensor to the CPU: nothing copied, nothing pinned


def test_to_device_pins_and_copies_asynchronously_to_cuda():
    """Without a GPU the CUDA side is played by a function mode: it records the calls ``to_device`` makes and
    answers them (pinning returns the tensor, the copy returns a clone)."""
    calls = []

    class FakeCuda(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.is_pinned:
                return False
            if func is torch.Tensor.pin_memory:
                calls.append("pin_memory")
                return args[0].clone()
            if func is torch.Tensor.to and torch.device(args[1]).type == "cuda":
                calls.append(("to", str(args[1]), kwargs.get("non_blocking", False)))
                return args[0].clone()
            return func(*args, **kwargs)

    batch = torch.arange(12).reshape(3, 4)
    with FakeCuda():
        moved = to_device(batch, torch.device("cuda", 0))
    assert calls == ["pin_memory", ("to", "cuda:0", True)]
    assert torch.equal(moved, batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_on_a_real_gpu():
    batch = torch.arange(4096).reshape(8, 512)
    moved = to_device(batch, torch.device("cuda"))
    torch.cuda.synchronize()
    assert moved.is_cuda and torch.equal(moved.cpu(), batch)


# ---- the loss ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_elements", [1, 5 * 101, 1 << 26])  # a row per chunk, several rows, one chunk
def test_chunked_cross_entropy_equals_torch(dtype, reduction, chunk_elements):
    torch.manual_seed(0)
    logits = (torch.randn(37, 101) * 3).to(dtype).requires_grad_()
    targets = torch.randint(0, 101, (37,))
    targets[[2, 5, 36]] = -100
    got = chunked_cross_entropy(logits, targets, reduction=reduction, chunk_elements=chunk_elements)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    upcast = logits.to(torch.promote_types(dtype, torch.float32))
    want = F.cross_entropy(upcast, targets, reduction=reduction, ignore_index=-100)
    (want_grad,) = torch.autograd.grad(want.sum(), logits)
    assert got.dtype == want.dtype and grad.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(grad, want_grad, **tol)


def test_chunked_cross_entropy_of_only_ignored_targets_is_nan_like_torch():
    logits = torch.randn(4, 7, requires_grad=True)
    targets = torch.full((4,), -100)
    assert torch.isnan(chunked_cross_entropy(logits, targets))
    assert torch.isnan(F.cross_entropy(logits, targets))
    with pytest.raises(ValueError, match="reduction"):
        chunked_cross_entropy(logits, targets, reduction="avg")


def test_loss_keeps_no_fp32_copy_of_half_precision_logits():
    """With bf16 logits (autocast), nothing logits-sized in fp32 is kept for backward: the loss saves the logits
    themselves and one number per row (the old ``F.cross_entropy(logits.float())`` saved an fp32 log-softmax,
    twice the logits' size)."""
    batch, seq, vocab = 2, 16, 300
    logits = torch.randn(batch, seq, vocab).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, vocab, (batch, seq))
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel(), t.untyped_storage().data_ptr() == logits.untyped_storage().data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = causal_lm_loss(logits, labels)
    big = [(dtype, same) for dtype, numel, same in saved if numel >= batch * seq * vocab]
    assert big and all(dtype == torch.bfloat16 and same for dtype, same in big), saved
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16
    expected = F.cross_entropy(logits.detach().float()[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)

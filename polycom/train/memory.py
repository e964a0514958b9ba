"""Peak GPU memory and FLOPs of one training step of a training config, measured on fake tensors.

``estimate_memory(cfg, world_size)`` runs one real training step of the config's model at full size with nothing
allocated: the model is built by ``build_model`` (as the trainer builds it, ``trainer.activation_checkpointing``
included) under ``FakeTensorMode``, where every op runs only its shape rule, and the step is
``polycom.train.step.train_step`` itself. ``torch.distributed._tools``' ``MemTracker`` (``FSDPMemTracker`` under
FSDP) follows every tensor storage the step creates and frees, and records the peak and what it held then;
``FlopCounterMode``'s formulas count the FLOPs of the same run. What is modelled, and how:

- **Precision**: ``trainer.mixed_precision`` as Accelerate runs it: the forward under autocast with its outputs
  converted to fp32 (``Accelerator.prepare_model``; the logits too), the step inside ``accelerator.autocast()``;
  fp32 weights, gradients and AdamW states. CPU autocast stands in for CUDA's, and agrees with it on the casts to
  bf16: matmuls (``linear``, ``mm``, ``bmm``) and ``scaled_dot_product_attention``. It does not model CUDA's casts
  to fp32: on a bf16 input CUDA autocast runs ``pow``, ``rsqrt``, ``exp``, ``log``, ``reciprocal``, ``softmax``,
  ``log_softmax``, ``sum``, ``cumsum``, ``prod``, ``logsumexp``, ``norm`` / ``linalg_vector_norm``, ``layer_norm``,
  ``group_norm`` and ``rms_norm`` (among others: torch's ``AutocastCUDA`` kernels) in fp32, making and keeping an
  fp32 copy where CPU autocast leaves the op in bf16. The model keeps these ops off bf16 tensors, so both
  autocasts run them alike: the residual stream is fp32 (the fp32 embedding plus bf16 projections), so every
  RMSNorm on it gets fp32; the router's softmax and z-loss, the loss and PNGLU upcast explicitly; PolyNorm and
  PolyReLU switch autocast off and compute in fp32; ReLU² multiplies (``r * r``, no ``pow``); SDPA's softmax is
  inside the attention kernel. ``tests/test_memory.py`` checks a bf16 forward of every activation, dense and MoE,
  for such ops (those that reach torch's dispatcher as themselves: ``rms_norm`` decomposes on CPU). Not alike:
  ``model.qk_norm`` (paper_moe_1b7b) applies ``rms_norm`` to the bf16 q and k projections (and, with
  ``parallel.param_dtype=bfloat16``, every RMSNorm gets bf16). CUDA casts the input to fp32 and returns fp32;
  CPU's composite ``rms_norm`` upcasts inside and returns bf16. Different tensors are kept for backward (here: the
  fp32 upcast, the fp32 normalized rows, the bf16 output and RoPE's bf16 rotation, 12 bytes per element of q and
  k; on CUDA by our reading 12 with the fused ``rms_norm`` kernel, 16 without); not measured on a GPU.
- **Optimizer**: AdamW as the config builds it; with ``optim.fused: null`` run as torch runs it on CUDA, the
  multi-tensor ("foreach") implementation (``as_on_cuda``; on CPU torch would pick the single-tensor loop), whose
  step holds an fp32 temporary the size of a whole parameter group (in ``optimizer``); ``fused`` true/false as
  configured.
- **Steady state**: the AdamW states exist before the tracked step (a first step on zero gradients); with gradient
  accumulation two micro-batches run, the second with the first's gradients (and, as ``train_step`` holds it, the
  first's output) still alive: the largest the peak gets.
- **Parallelism** (``parallel.name``, ``world_size``): ``fsdp`` with world size N > 1 shards the model with torch's
  ``fully_shard`` over a fake process group of N ranks (the estimate is rank 0's), with the units Accelerate's FSDP2
  preparation makes (every ``DecoderLayer``; the input embedding; final norm + head, kept gathered after forward;
  the root) and ``configs/parallel``'s mixed-precision policy and ``reshard_after_forward``. Parameters, gradients
  and AdamW states are then 1/N each, plus the gathered weights of the units in use, the all-gather and
  reduce-scatter buffers, and, under gradient accumulation, the unsharded gradients FSDP2 keeps between
  micro-batches (``no_sync``). ``ddp`` is not simulated (its C++ reducer needs real storage): every rank holds the
  whole model, and DDP's gradient buckets (a copy of the fp32 gradients, ``gradient_as_bucket_view=False`` as
  Accelerate leaves it) are added when N > 1.
- **Attention**: fake CPU tensors take the CPU flash-attention kernel (causal, no mask), which keeps q, k, v, the
  output and one log-sum-exp per row for backward, as CUDA's flash / cuDNN kernels do; no (T, T) score matrix
  (CPU's math kernel, which would make one, is not what runs).
- **Kernels**: the activations run their torch-op bodies (the C kernels are CPU-only and read data pointers),
  as on CUDA, except Liger's PolyNorm where installed ("auto" backend): it keeps an fp32 copy of its bf16 input
  (one more FFN-hidden bf16-sized tensor per layer than estimated, without "activation" checkpointing, which
  recomputes it). MoE experts run ``grouped_mm``; configs whose experts would read their token counts on the host
  (per-expert coefficients, the Python loop: unaligned widths) are refused (fake tensors have no values).
- **Not included**: the CUDA context and allocator fragmentation (``fits`` keeps ``headroom`` of the GPU for
  them), NCCL buffers, ``torch.compile``'s graphs (the estimate is of the eager step; compiled graphs usually keep
  less), validation and checkpoint writes.

On CPU the estimate equals the peak a real run of the same step allocates (tests/test_memory.py). The script is
``scripts/estimate_memory.py``; its JSON holds ``MemoryEstimate.to_dict()``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

GIB = 2**30
# A published vocabulary size for Hub tokenizers that cannot be loaded offline (len(tokenizer), before padding)
KNOWN_VOCAB_SIZES = {"gpt2": 50257, "openai-community/gpt2": 50257, "EleutherAI/gpt-neox-20b": 50277,
                     "allenai/gpt-neox-olmo-dolma-v1_5": 50280}


@dataclass
class MemoryEstimate:
    """Rank 0's peak over one optimizer step, and what it held at that moment (bytes)."""

    peak_bytes_per_gpu: int
    breakdown: dict  # params, grads, optimizer, activations, temporaries, communication, inputs: sums to the peak
    tracker_categories: dict  # the tracker's own categories at the peak
    gpu_memory_bytes: int
    usable_bytes: int  # gpu_memory_bytes * (1 - headroom)
    fits: bool
    flops: dict  # analytic_per_token (polycom.model.stats), counted_per_token (FlopCounterMode), counted_total
    setup: dict  # world size, parallelism, precision, micro-batch, accumulation, checkpointing, vocabulary, ...
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A human-readable summary."""
        s = self.setup
        lines = [f"{s['model']} ({s['activation']}, {s['num_params']/1e6:,.1f}M params, {s['num_params_active']/1e6:,.1f}M "
                 f"active, vocab {s['vocab_size']}): {s['parallel']} x {s['world_size']}, micro-batch "
                 f"{s['micro_batch_size']} x {s['seq_len']} tokens, {s['accumulation_steps']} accumulation step(s), "
                 f"{s['mixed_precision']}, activation checkpointing {s['activation_checkpointing']}",
                 f"peak per GPU: {self.peak_bytes_per_gpu / GIB:8.2f} GiB  "
                 f"({'fits' if self.fits else 'does NOT fit'} in {self.usable_bytes / GIB:.1f} GiB usable of "
                 f"{self.gpu_memory_bytes / GIB:.0f} GiB)"]
        lines += [f"  {key:<13} {value / GIB:8.2f} GiB" for key, value in self.breakdown.items()]
        f = self.flops
        lines.append(f"FLOPs per token: {f['analytic_per_token']:.4g} analytic (6N + 12LdT), "
                     f"{f['counted_per_token']:.4g} counted (FlopCounterMode, this step: recomputation included, "
                     f"attention not halved for the causal mask)")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---- what fake tensors need --------------------------------------------------------------------------------------
class _StepOps(TorchDispatchMode):
    """Sees every op of the tracked step (innermost mode): counts its FLOPs, and answers the two questions fake
    tensors cannot.

    FLOPs: ``FlopCounterMode``'s formulas (``torch.utils.flop_counter``, plus ``_flop_formulas``), applied here rather
    than by entering ``FlopCounterMode``: its per-module tracker's backward hooks keep the activations a checkpointed
    layer recomputes alive to the end of backward (measured: ~0.9 GiB per layer of paper_dense_1b at 4 x 4096 with
    ``full``), which would change the memory being measured.
    Fake tensors: values read on the host (the step's finite check) are taken as finite; ``grouped_mm`` in a dtype
    other than bf16 (torch's shape rule copies the CUDA kernel's bf16-only check; the CPU kernel, and so the model
    on CPU, runs fp32) gets the rule's shape in the input dtype."""

    def __init__(self):
        super().__init__()
        from torch.utils.flop_counter import FlopCounterMode

        self.formulas = FlopCounterMode(display=False, custom_mapping=_flop_formulas()).flop_registry
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            return True if args[0].dtype == torch.bool else (1.0 if args[0].is_floating_point() else 1)
        if func is torch.ops.aten._grouped_mm.default and args[0].dtype != torch.bfloat16:
            stand_ins = [a.to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                         for a in args[:2]]
            out = args[0].new_empty(func(*stand_ins, *args[2:], **kwargs).shape)
        else:
            out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def _flop_formulas() -> dict:
    """FlopCounterMode formulas for the ops it has none for: CPU flash attention (counted as the CUDA kernels are)
    and ``grouped_mm`` (2 x rows x inner x outer over all groups)."""
    from torch.utils import flop_counter

    def grouped_mm(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        if len(a_shape) == 2 and len(b_shape) == 3:  # (M, K) x (G, K, N): each row meets one group's matrix
            return 2 * a_shape[0] * a_shape[1] * b_shape[2]
        if len(a_shape) == 2 and len(b_shape) == 2:  # (K, M) x (M, N) -> (G, K, N): M split over the groups
            return 2 * a_shape[0] * a_shape[1] * b_shape[1]
        return 2 * math.prod(out_shape) * a_shape[-1]  # batched 3-D x 3-D

    def attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    def attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    aten = torch.ops.aten
    formulas = {aten._grouped_mm: grouped_mm}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = attention
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = attention_backward
    return formulas


@contextlib.contextmanager
def torch_op_kernels():
    """The activations' torch-op bodies instead of the CPU C kernels (which read data pointers)."""
    from polycom.model import cpu_kernels

    enabled = cpu_kernels.ENABLED
    cpu_kernels.ENABLED = False
    try:
        yield
    finally:
        cpu_kernels.ENABLED = enabled


def as_on_cuda(optimizer: torch.optim.Optimizer) -> None:
    """Run ``optimizer`` (built with neither ``foreach`` nor ``fused``) as torch runs it on CUDA: the multi-tensor
    ("foreach") implementation, which torch picks by default for CUDA parameters (DTensors included) and never for
    CPU ones. Its memory differs: ``_foreach_sqrt`` of the second moments (and the ops after it) holds an fp32
    temporary the size of every parameter of a group at once, where the single-tensor loop holds one parameter's."""
    for group in optimizer.param_groups:
        group["foreach"] = True


@contextlib.contextmanager
def _fake_process_group(world_size: int):
    """A process group of ``world_size`` ranks that moves no data (rank 0 is this process), and its CPU mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("estimate_memory with parallel=fsdp needs its own (fake) process group: run it outside a "
                           "distributed job")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()


class _StepAccelerator:
    """What ``train_step`` asks of its Accelerator, as Accelerate answers on a GPU, for a model on fake tensors."""

    device = torch.device("cpu")

    def __init__(self, autocast_dtype: torch.dtype | None, fsdp: bool):
        self.autocast_dtype, self.fsdp = autocast_dtype, fsdp

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.autocast_dtype)

    @contextlib.contextmanager
    def no_sync(self, model):
        if not self.fsdp:  # DDP's no_sync changes no memory: its buckets exist either way
            yield
            return
        model.set_requires_gradient_sync(False)  # what Accelerate's no_sync does under FSDP2
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def _peak_only(tracker_class):
    """``tracker_class`` recording only the global peak: the per-module peaks it also keeps cost a pass over every
    module after every op (a third of the estimate's time) and are not read."""

    class PeakOnly(tracker_class):
        def _update_peak_stats(self, peak_state) -> None:
            for device, snapshot in self._curr_mem_snap.items():
                if self._peak_mem.get(device, 0) < snapshot["Total"]:
                    self._peak_mem[device] = snapshot["Total"]
                    self._peak_mem_snap[device] = dict(snapshot)

    return PeakOnly


@contextlib.contextmanager
def _per_micro_batch_stats(model, tracker):
    """The trackers refuse a second forward of the root module (they keep per-module statistics of one iteration):
    clear those before each micro-batch's forward. The peak, which is what is read, is kept. Registered before the
    tracker registers its own global hooks, so it runs first."""

    def reset(module, args):
        if module is model:
            tracker.reset_mod_stats()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(reset)
    try:
        yield
    finally:
        handle.remove()


def _shard_as_accelerate(model, mesh, parallel_cfg) -> None:
    """``fully_shard`` with the units of Accelerate's ``fsdp2_prepare_model`` (transformer_based_wrap) and the
    plugin of ``polycom.train.parallel``."""
    from torch.distributed.fsdp import fully_shard

    from polycom.train.parallel import WRAP_UNIT, fsdp_plugin

    plugin = fsdp_plugin(parallel_cfg)
    kwargs = {"mesh": mesh, "mp_policy": plugin.mixed_precision_policy,
              "reshard_after_forward": plugin.reshard_after_forward}
    for module in list(model.modules()):
        if type(module).__name__ == WRAP_UNIT:
            fully_shard(module, **kwargs)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = embed.weight is head.weight
    if not tied:
        fully_shard(embed, **kwargs)
    tail = [model.model.norm, embed, head] if tied else [model.model.norm, head]
    fully_shard(tail, **{**kwargs, "reshard_after_forward": False})
    fully_shard(model, **{k: v for k, v in kwargs.items() if k != "reshard_after_forward"})


# ---- the estimate ------------------------------------------------------------------------------------------------
def vocab_size_for(cfg, vocab_size: int | None = None) -> tuple[int, str]:
    """The model's vocabulary and where it came from: ``vocab_size`` (the tokenizer's size, ``len(tokenizer)``) if
    given, else the config's tokenizer; padded to a multiple of 64 either way, as the trainer pads it
    (``polycom.data.padded_vocab_size``)."""
    from polycom.data.tokenizer import padded_vocab_size

    class _Sized:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    if vocab_size is not None:
        if vocab_size < 1:
            raise ValueError(f"vocabulary size {vocab_size} (--vocab-size) must be >= 1")
        return padded_vocab_size(_Sized(vocab_size)), f"--vocab-size {vocab_size}, padded"
    tok = cfg.tokenizer
    if tok.kind == "bpe":
        return padded_vocab_size(_Sized(tok.vocab_size)), f"tokenizer.vocab_size={tok.vocab_size} (bpe), padded"
    try:
        from polycom.data import build_tokenizer

        return padded_vocab_size(build_tokenizer(tok, cfg.data)), f"tokenizer {tok.name}, padded"
    except Exception as err:  # offline, or a name that does not exist
        if tok.name in KNOWN_VOCAB_SIZES:
            return (padded_vocab_size(_Sized(KNOWN_VOCAB_SIZES[tok.name])),
                    f"tokenizer {tok.name} not loadable here ({type(err).__name__}): its published size "
                    f"{KNOWN_VOCAB_SIZES[tok.name]}, padded")
        raise ValueError(f"cannot load tokenizer.name={tok.name!r} to size the vocabulary ({err}); pass its size "
                         "(--vocab-size N)") from err


def _categories(snapshot: dict) -> dict:
    return {getattr(key, "name", str(key)).lower(): int(value) for key, value in snapshot.items() if key != "Total"}


_BREAKDOWN = {  # tracker category -> breakdown key
    "param": "params", "sharded_param": "params", "unsharded_param": "params", "buffer": "params",
    "grad": "grads", "sharded_grad": "grads", "unsharded_grad": "grads", "optstate": "optimizer", "opt": "optimizer",
    "act": "activations", "temp": "temporaries", "all_gather": "communication", "reduce_scatter": "communication",
    "inp": "inputs", "oth": "inputs",
}


def _refuse_host_reads(model, dtype: torch.dtype) -> None:
    """Refuse the MoE paths that read the experts' token counts on the host (``counts.tolist()``): fake tensors have
    no values, and the estimate's stand-in answer (every count 1) cannot split N·k rows. Those are per-expert
    coefficients and the experts' Python loop; which path runs is the model's own choice
    (``MoEFeedForward._use_grouped_mm``), asked here for the dtype the experts will see (``dtype``) on the CPU."""
    from polycom.model.moe import MoEFeedForward

    for name, module in model.named_modules():
        if not isinstance(module, MoEFeedForward):
            continue
        if module.per_expert_act:
            raise NotImplementedError("model.moe_shared_coefficients=false splits the experts' rows on the host "
                                      "(values fake tensors do not have): the estimator needs shared coefficients")
        if not module._use_grouped_mm(torch.empty(0, module.hidden_size, dtype=dtype)):
            raise NotImplementedError(
                f"{name}: the experts would run in the Python loop (MoEFeedForward.expert_backend="
                f"{module.expert_backend!r}, {dtype}, widths d={module.hidden_size}, h={module.expert_hidden_size}), "
                "which reads each expert's token count on the host: fake tensors have no values. The estimator needs "
                "the grouped_mm path: expert_backend 'auto' (a module attribute, no config key) and model.hidden_size "
                f"and the expert width (model.moe_intermediate_size, matched to the activation) multiples of "
                f"{16 // dtype.itemsize} ({dtype}: 16 bytes)")


@dataclass
class TrainingStep:
    """One optimizer step of a config, ready to run (``run()``): model, AdamW (its states already created), the
    micro-batches, the stand-in Accelerator. On fake tensors when built inside ``FakeTensorMode``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: list
    accelerator: "_StepAccelerator"
    grad_clip: float | None

    def run(self):
        from polycom.train.step import train_step

        return train_step(self.model, self.optimizer, self.accelerator, self.batches, self.grad_clip)


def build_training_step(cfg, vocab_size: int, world_size: int = 1, mesh=None) -> TrainingStep:
    """The step ``estimate_memory`` tracks, in the steady state: the model as the trainer builds it (sharded as
    Accelerate's FSDP2 when ``mesh`` is given), AdamW with its states, ``min(accumulation, 2)`` micro-batches, the
    forward wrapped as ``Accelerator.prepare_model`` wraps it under mixed precision."""
    from polycom.train.build import build_model
    from polycom.train.optim import build_optimizer
    from polycom.train.parallel import DTYPES

    tc = cfg.trainer
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.mixed_precision)
    model = build_model(cfg, vocab_size=vocab_size)
    param_dtype = cfg.parallel.param_dtype if mesh is not None else None  # what FSDP gathers the weights in
    _refuse_host_reads(model, dtype or DTYPES[param_dtype or "float32"])  # the dtype the experts compute in
    model.train()
    if mesh is not None:
        _shard_as_accelerate(model, mesh, cfg.parallel)
    optimizer = build_optimizer(model, cfg.optim)
    if cfg.optim.fused is None:  # torch's default on CUDA, not on CPU (see as_on_cuda)
        as_on_cuda(optimizer)
    for p in model.parameters():  # steady state: the AdamW states exist
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if dtype is not None:
        from accelerate.utils import convert_outputs_to_fp32

        model.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=dtype)(model.forward))
    accum = tc.global_batch_size // (tc.micro_batch_size * world_size)
    batches = [torch.randint(0, vocab_size, (tc.micro_batch_size, tc.seq_len)) for _ in range(min(accum, 2))]
    return TrainingStep(model, optimizer, batches, _StepAccelerator(dtype, fsdp=mesh is not None), tc.grad_clip)


def estimate_memory(cfg, world_size: int = 1, gpu_memory_gib: float = 80.0, headroom: float = 0.1,
                    vocab_size: int | None = None) -> MemoryEstimate:
    """Rank 0's peak memory over one optimizer step of ``cfg`` on ``world_size`` GPUs (see the module docstring).
    ``vocab_size``: the tokenizer's size when its config cannot be loaded here (padded as the trainer pads it)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker

    from polycom.model.stats import count_parameters, flops_per_token
    from polycom.train.validate import validate_config

    if world_size < 1:
        raise ValueError(f"world size {world_size} must be >= 1")
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom {headroom} (--headroom) is the share of the GPU kept free for the CUDA context "
                         "and fragmentation: it must be in [0, 1)")
    if not gpu_memory_gib > 0:
        raise ValueError(f"GPU memory {gpu_memory_gib} GiB (--gpu-memory-gib) must be > 0")
    validate_config(cfg, world_size)
    tc = cfg.trainer
    parallel = cfg.parallel.name if "parallel" in cfg else "ddp"
    fsdp = parallel == "fsdp" and world_size > 1
    vocab, vocab_source = vocab_size_for(cfg, vocab_size)
    accum = tc.global_batch_size // (tc.micro_batch_size * world_size)
    notes = [f"vocabulary {vocab}: {vocab_source}"]

    with torch_op_kernels(), (_fake_process_group(world_size) if fsdp else contextlib.nullcontext()) as mesh, \
            FakeTensorMode():
        step = build_training_step(cfg, vocab, world_size, mesh)
        model = step.model
        counts = count_parameters(model)  # DTensors count their global size
        analytic = flops_per_token(model, tc.seq_len)
        if fsdp:
            tracker = _peak_only(FSDPMemTracker)(model, step.optimizer)
            tracker.track_inputs(tuple(step.batches))
        else:
            tracker = _peak_only(MemTracker)()
            tracker.track_external(model, step.optimizer, *step.batches)
        step_ops = _StepOps()
        with _per_micro_batch_stats(model, tracker), tracker, step_ops:
            step.run()
        snapshot = tracker.get_tracker_snapshot("peak").get(torch.device("cpu"), {})

    categories = _categories(snapshot)
    breakdown = dict.fromkeys(("params", "grads", "optimizer", "activations", "temporaries", "communication",
                               "inputs"), 0)
    for key, value in categories.items():
        breakdown[_BREAKDOWN.get(key, "temporaries")] += value
    if parallel == "ddp" and world_size > 1:
        buckets = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4
        breakdown["communication"] += buckets
        notes.append(f"DDP gradient buckets added: {buckets / GIB:.2f} GiB (fp32 copy of the gradients)")
    if fsdp:
        notes.append(f"FSDP2 over a fake process group of {world_size}: parameters, gradients and AdamW states "
                     f"sharded 1/{world_size}; param_dtype={cfg.parallel.param_dtype}, "
                     f"reduce_dtype={cfg.parallel.reduce_dtype}")
        if accum > 1:
            notes.append("gradient accumulation under FSDP2: no_sync keeps every unsharded gradient between "
                         "micro-batches (in 'grads')")
    elif parallel == "fsdp":
        notes.append("parallel=fsdp on one process: the plain model (nothing to shard)")
    if tc.compile:
        notes.append("trainer.compile=true: estimated eager; compiled graphs usually keep less")
    peak = sum(breakdown.values())
    gpu_bytes = int(gpu_memory_gib * GIB)
    usable = int(gpu_bytes * (1.0 - headroom))
    tokens = len(step.batches) * tc.micro_batch_size * tc.seq_len
    setup = {"model": _model_name(cfg), "activation": cfg.activation.name,
             "num_params": counts.total, "num_params_active": counts.active, "vocab_size": vocab,
             "world_size": world_size, "parallel": parallel, "micro_batch_size": tc.micro_batch_size,
             "seq_len": tc.seq_len, "global_batch_size": tc.global_batch_size, "accumulation_steps": accum,
             "micro_batches_tracked": len(step.batches), "mixed_precision": tc.mixed_precision,
             "activation_checkpointing": tc.activation_checkpointing, "compile": tc.compile, "headroom": headroom}
    return MemoryEstimate(
        peak_bytes_per_gpu=peak, breakdown=breakdown, tracker_categories=categories, gpu_memory_bytes=gpu_bytes,
        usable_bytes=usable, fits=peak <= usable,
        flops={"analytic_per_token": analytic, "counted_per_token": step_ops.flops / tokens,
               "counted_total": step_ops.flops, "tokens": tokens},
        setup=setup, notes=notes)


def _model_name(cfg) -> str:
    m = cfg.model
    experts = f", {m.num_experts} experts top-{m.num_experts_per_tok}" if m.num_experts else ""
    return f"d{m.hidden_size} x {m.num_hidden_layers} layers{experts}"

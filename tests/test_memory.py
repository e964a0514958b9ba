"""The memory and FLOP estimator (polycom/train/memory.py, scripts/estimate_memory.py): against a real allocation,
against the analytic FLOP count, per checkpointing mode, and on the configs the README and the paper experiments
run on GPUs."""

import json

import pytest
import torch
from scripts_loader import load_script
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from polycom.model.activations import ACTIVATIONS
from polycom.train import memory
from polycom.train import build
from polycom.train.build import compose_config
from polycom.train.validate import ConfigError, validate_config

GIB = 2**30
PAPER_VOCAB = 50304  # the GPT-2 tokenizer (50257) padded to a multiple of 64, as the trainer pads it
# The world size the paper experiments are sized for (their header comments: one node of 8 x 80 GiB GPUs)
PAPER_WORLD_SIZE = 8


def _estimate(overrides, world_size=1, **kwargs) -> memory.MemoryEstimate:
    return memory.estimate_memory(compose_config(overrides), world_size=world_size, **kwargs)


def _real_peak_bytes(overrides, tmp_path) -> int:
    """The peak of a real run of the same training step on CPU, from the allocator: every allocation and free the
    CPU allocator reports to the profiler (``profile_memory``), in time order, plus the tensors that existed
    before (weights, AdamW states, batches; sized by the profiler from their storages), as
    ``export_memory_timeline`` sums them. Independent of the estimator's bookkeeping (MemTracker on fake tensors)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = compose_config(overrides)
    torch.manual_seed(0)
    with memory.torch_op_kernels():  # the estimator runs the activations' torch-op bodies: the same ops here
        step = memory.build_training_step(cfg, vocab_size=memory.vocab_size_for(cfg)[0])
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            step.run()
    path = tmp_path / "timeline.json"
    prof.export_memory_timeline(str(path), device="cpu")
    _, sizes = json.loads(path.read_text())
    return max(sum(row) for row in sizes)


TINY = ["model=tiny", "tokenizer.vocab_size=512", "trainer.seq_len=256"]


@pytest.mark.parametrize("overrides", [
    TINY + ["trainer.micro_batch_size=8", "trainer.global_batch_size=16"],  # fp32, two micro-batches
    TINY + ["trainer.micro_batch_size=8", "trainer.global_batch_size=8", "trainer.activation_checkpointing=activation"],
    ["model=moe_tiny", "tokenizer.vocab_size=512", "trainer.micro_batch_size=8", "trainer.global_batch_size=8",
     "trainer.mixed_precision=bf16", "trainer.activation_checkpointing=full"],
], ids=["dense-fp32-accumulation", "dense-activation", "moe-bf16-full"])
def test_estimate_matches_a_real_allocation(overrides, tmp_path):
    estimate = _estimate(overrides).peak_bytes_per_gpu
    real = _real_peak_bytes(overrides, tmp_path)
    print(f"estimate {estimate / 2**20:.2f} MiB, real {real / 2**20:.2f} MiB")
    assert abs(estimate - real) <= 0.15 * real


@pytest.mark.parametrize("model", ["paper_dense_1b", "paper_moe_1b7b"])
def test_checkpointing_modes_trade_memory_for_recomputation(model):
    """full < activation < none in memory; "activation" recomputes no matmul (the same counted FLOPs as none),
    "full" recomputes each layer's forward. Two layers of the paper models at 4 x 4096 tokens with a small
    vocabulary, so that activations, not the weights and AdamW states, make the peak (fast; per layer the same)."""
    vocab = 512
    overrides = [f"model={model}", "model.num_hidden_layers=2", "trainer=gpu", "trainer.seq_len=4096",
                 "trainer.micro_batch_size=4", "trainer.global_batch_size=4"]
    estimates = {mode: _estimate(overrides + [f"trainer.activation_checkpointing={mode}"], vocab_size=vocab)
                 for mode in ("none", "activation", "full")}
    peaks = {mode: e.peak_bytes_per_gpu for mode, e in estimates.items()}
    print({mode: f"{peak / GIB:.2f} GiB" for mode, peak in peaks.items()})
    assert peaks["full"] < peaks["activation"] < peaks["none"]

    cfg = compose_config(overrides)
    d, layers, seq = cfg.model.hidden_size, cfg.model.num_hidden_layers, cfg.trainer.seq_len
    flops = {mode: e.flops for mode, e in estimates.items()}
    # counted: 6N for the matmuls, attention 4·T·d forward + 10·T·d backward per layer and token (the backward
    # recomputes the scores) against PaLM's 12 in the analytic count
    assert flops["none"]["counted_per_token"] == pytest.approx(
        flops["none"]["analytic_per_token"] + 2 * layers * d * seq, rel=1e-3)
    assert flops["activation"]["counted_total"] == flops["none"]["counted_total"]
    # "full" reruns each layer's forward (matmuls: 2 x their parameters, attention: 4·T·d), except what the
    # non-reentrant checkpoint skips: it stops as soon as the tensors backward needs are back, so a dense layer's
    # last matmul (the down projection, whose output nothing saves) never runs twice; an MoE's does (its output is
    # kept to be weighted by the router)
    model_cfg = build.model_config(cfg, vocab_size=vocab)
    matmul = (flops["none"]["analytic_per_token"] - 12 * layers * d * seq) / 6  # N of the analytic count
    layer_forward = 2 * (matmul - vocab * d) + 4 * layers * d * seq
    skipped = 0 if model_cfg.is_moe else 2 * layers * d * model_cfg.intermediate_size
    assert flops["full"]["counted_per_token"] - flops["none"]["counted_per_token"] == pytest.approx(
        layer_forward - skipped, rel=1e-3)


def test_fsdp_shards_weights_gradients_and_optimizer_state():
    """parallel=fsdp over 4 (fake) ranks holds a quarter of the AdamW states and weights of one rank; DDP over 4
    adds its fp32 gradient buckets."""
    overrides = ["model=cpu_small", "trainer.micro_batch_size=4", "trainer.global_batch_size=16"]
    single = _estimate(overrides)
    sharded = _estimate(overrides + ["parallel=fsdp"], world_size=4)
    ddp = _estimate(overrides[:-1] + ["trainer.global_batch_size=64"], world_size=4)  # the same 4 micro-batches
    assert sharded.breakdown["optimizer"] == pytest.approx(single.breakdown["optimizer"] / 4, rel=0.02)
    assert sharded.tracker_categories["sharded_param"] == pytest.approx(single.breakdown["params"] / 4, rel=0.02)
    assert sharded.peak_bytes_per_gpu < single.peak_bytes_per_gpu
    params = single.setup["num_params"]
    assert ddp.breakdown["communication"] == 4 * params
    assert ddp.peak_bytes_per_gpu == single.peak_bytes_per_gpu + 4 * params


def test_the_gpu_trainer_validates_on_eight_processes_and_the_error_says_how_to_fix_it():
    validate_config(compose_config(["trainer=gpu"]), world_size=8)
    with pytest.raises(ConfigError, match=r"micro_batch_size=16 x 8 process\(es\) = 128: set "
                                          r"trainer.global_batch_size=128 .* or trainer.micro_batch_size=8"):
        validate_config(compose_config(["trainer=gpu", "trainer.global_batch_size=64"]), world_size=8)


# The README's GPU commands (section "Several processes or GPUs"), as the estimator sees them.
README_GPU_RUNS = [
    pytest.param(["trainer=gpu"], 1, id="trainer=gpu"),
    pytest.param(["trainer=gpu"], 8, id="accelerate-ddp-8"),
    pytest.param(["trainer=gpu", "model=gpt2_small"], 8, id="gpt2_small-ddp-8"),
    pytest.param(["trainer=gpu", "model=paper_dense_1b", "parallel=fsdp"], 8, id="accelerate-fsdp-8-paper_dense_1b",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("overrides,world_size", README_GPU_RUNS)
def test_readme_gpu_commands_fit_an_80_gib_gpu(overrides, world_size):
    estimate = _estimate(overrides, world_size=world_size, gpu_memory_gib=80)
    print(estimate.table())
    assert estimate.fits


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["paper_dense_1b", "paper_moe_1b7b"])
def test_paper_experiments_fit_an_80_gib_gpu_at_their_world_size(experiment):
    """Full size, sequences of 4096, the experiment's micro-batch, checkpointing and parallelism (~15 s each)."""
    estimate = _estimate([f"experiment={experiment}"], world_size=PAPER_WORLD_SIZE, gpu_memory_gib=80,
                         vocab_size=PAPER_VOCAB)
    print(estimate.table())
    assert estimate.setup["seq_len"] == 4096 and estimate.setup["global_batch_size"] * 4096 == 4_194_304
    assert estimate.fits, estimate.table()


def test_the_script_writes_the_estimate_as_json(tmp_path, capsys):
    script = load_script("estimate_memory")
    out = tmp_path / "estimate.json"
    assert script.main(["--json", str(out), *TINY]) == 0
    payload = json.loads(out.read_text())
    for key in ("peak_bytes_per_gpu", "fits", "breakdown", "flops", "setup", "overrides"):
        assert key in payload
    assert payload["peak_bytes_per_gpu"] == sum(payload["breakdown"].values()) > 0
    assert set(payload["breakdown"]) >= {"params", "grads", "optimizer", "activations", "temporaries"}
    assert payload["fits"] is True and payload["flops"]["counted_per_token"] > 0
    assert "peak per GPU" in capsys.readouterr().out

    assert script.main(["--gpu-memory-gib", "0.001", *TINY]) == 1  # does not fit
    assert script.main(["--world-size", "3", *TINY]) == 2  # 16 sequences are not a multiple of 8 x 3
    assert "trainer.global_batch_size=16 is not a multiple" in capsys.readouterr().err


# ---- the step as CUDA runs it ------------------------------------------------------------------------------------
def test_adamw_runs_as_on_cuda_unless_fused_is_configured():
    """``optim.fused: null`` leaves the implementation to torch, which picks the multi-tensor ("foreach") AdamW for
    CUDA parameters and the single-tensor loop for CPU ones: the estimate runs it as on CUDA, whose
    ``_foreach_sqrt`` of the second moments holds an fp32 temporary the size of a whole parameter group (the peak
    of a tiny step, where the optimizer dominates). ``fused`` true/false configured explicitly is kept."""
    overrides = ["model=tiny", "tokenizer.vocab_size=512", "trainer.seq_len=16", "trainer.micro_batch_size=1",
                 "trainer.global_batch_size=1"]
    for fused, foreach in (("null", True), ("false", None), ("true", None)):
        cfg = compose_config(overrides + [f"optim.fused={fused}"])
        step = memory.build_training_step(cfg, vocab_size=512)
        assert {g["foreach"] for g in step.optimizer.param_groups} == {foreach}, fused

    default, single = _estimate(overrides), _estimate(overrides + ["optim.fused=false"])
    params = default.setup["num_params"]
    decay = sum(p.numel() for p in step.optimizer.param_groups[0]["params"])  # the largest group
    assert default.breakdown["optimizer"] >= 2 * 4 * params + 4 * decay  # exp_avg, exp_avg_sq + sqrt(exp_avg_sq)
    assert single.breakdown["optimizer"] < 2 * 4 * params + 4 * decay
    assert default.peak_bytes_per_gpu > single.peak_bytes_per_gpu


class _OpsCudaAutocastRecasts(TorchDispatchMode):
    """Records the ops called on a bf16/fp16 tensor that CUDA autocast re-casts and CPU autocast does not: an
    ``AutocastCUDA`` kernel in torch's dispatcher and no ``AutocastCPU`` one (``pow``, ``rsqrt``, ``sum``,
    ``softmax``, ... run in fp32 on CUDA). On such an op the CPU estimate would miss CUDA's fp32 copies."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
        name = func.name()
        if has_kernel(name, "AutocastCUDA") and not has_kernel(name, "AutocastCPU") and any(
                isinstance(a, torch.Tensor) and a.dtype in (torch.bfloat16, torch.float16)
                for a in tree_leaves((args, kwargs))):
            self.seen.add(name)
        return func(*args, **kwargs)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_the_bf16_forward_calls_no_op_cuda_autocast_runs_in_fp32(activation):
    """The estimate's CPU autocast stands in for CUDA's only where the model calls no op that CUDA autocast casts to
    fp32 on a bf16 input (polycom/train/memory.py, "Precision"). A bf16 forward with loss of the tiny dense and MoE
    models, every activation, the torch-op bodies the estimate runs. (ReLU² as ``relu(x).square()`` failed here:
    ``pow``.)"""
    for model in ("tiny", "moe_tiny"):
        cfg = compose_config([f"model={model}", f"activation={activation}", "tokenizer.vocab_size=512"])
        ids = torch.randint(0, 512, (2, 32))
        with memory.torch_op_kernels():
            net = build.build_model(cfg, vocab_size=512)
            with torch.autocast("cpu", dtype=torch.bfloat16), _OpsCudaAutocastRecasts() as ops:
                net(ids, labels=ids).loss
        assert not ops.seen, f"{model}: {sorted(ops.seen)}"


# ---- refusals and input checks -----------------------------------------------------------------------------------
MOE_TINY_BF16 = ["model=moe_tiny", "tokenizer.vocab_size=512", "trainer.seq_len=64", "trainer.micro_batch_size=2",
                 "trainer.global_batch_size=2", "trainer.mixed_precision=bf16"]


def test_moe_experts_that_read_counts_on_the_host_are_refused_up_front(capsys):
    """The experts' Python loop splits rows by token counts read on the host, which fake tensors do not have (every
    read answers 1: the split would fail deep in the step with an opaque shape error). An expert width that is not
    a multiple of 16 bytes takes the loop; so does ``expert_backend='loop'``."""
    unaligned = MOE_TINY_BF16 + ["model.ffn_width_multiple=1", "model.moe_intermediate_size=36"]  # h = 54
    with pytest.raises(NotImplementedError, match=r"expert_backend='auto'.*multiples of 8 \(torch.bfloat16"):
        _estimate(unaligned)
    script = load_script("estimate_memory")
    assert script.main(unaligned) == 2
    assert "Python loop" in capsys.readouterr().err

    model = build.build_model(compose_config(MOE_TINY_BF16), vocab_size=512)
    memory._refuse_host_reads(model, torch.bfloat16)  # aligned, auto: grouped_mm
    model.model.layers[1].mlp.expert_backend = "loop"
    with pytest.raises(NotImplementedError, match=r"model.layers.1.mlp: .*expert_backend='loop'"):
        memory._refuse_host_reads(model, torch.bfloat16)


def test_the_vocabulary_is_padded_as_the_trainer_pads_it_and_bad_arguments_are_refused(capsys):
    cfg = compose_config(TINY)
    assert memory.vocab_size_for(cfg, 50257)[0] == 50304  # GPT-2's tokenizer, as the trainer pads it
    assert memory.vocab_size_for(cfg, 50304)[0] == 50304
    assert memory.vocab_size_for(cfg)[0] == 512
    assert _estimate(TINY, vocab_size=500).setup["vocab_size"] == 512

    script = load_script("estimate_memory")
    for argv, message in ((["--headroom", "1.5"], "--headroom"), (["--headroom", "-0.1"], "--headroom"),
                          (["--vocab-size", "0"], "--vocab-size"), (["--gpu-memory-gib", "0"], "--gpu-memory-gib")):
        assert script.main([*argv, *TINY]) == 2, argv
        assert message in capsys.readouterr().err, argv

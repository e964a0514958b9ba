"""How the model is spread over the processes of ``accelerate launch``: the ``parallel`` config group builds the
Accelerator.

``parallel=ddp`` (default): every process holds the whole model; under several processes Accelerate wraps it in
DistributedDataParallel (gradients all-reduced in fp32, also under bf16 autocast).

``parallel=fsdp``: FSDP2 (torch's ``fully_shard``) through Accelerate's ``FullyShardedDataParallelPlugin``: every
``DecoderLayer`` is one unit (its weights gathered for its forward and backward, ``reshard_after_forward``), and the
embedding / final norm + head and the rest are units of their own. Parameters, gradients and optimizer state are
sharded (the parameters become ``DTensor``s). The mixed-precision policy keeps DDP's semantics by default
(``parallel.param_dtype: null``, ``reduce_dtype: float32``): fp32 master weights and fp32 gradient reduce-scatter,
bf16 compute only where ``trainer.mixed_precision=bf16`` autocasts, as under DDP. ``param_dtype=bfloat16`` halves
the all-gather traffic but then every weight, the norm gains and PolyCom coefficients included, is bf16 in the
forward and backward (a different trajectory than DDP; the fp32 shards are still what the optimizer updates).
The initial weights are rank 0's, broadcast to the shards (``cpu_ram_efficient_loading``), as DDP does.

Accelerate applies an FSDP plugin only on accelerator devices (CUDA, XPU, ...): on CPU processes (gloo) it keeps its
``MULTI_CPU`` mode and silently runs DDP. ``build_accelerator`` switches its state to FSDP on CPU itself, so the
FSDP code paths (sharding, sharded checkpoints, collectives in logging and evaluation) run and are tested on a CPU
machine (see ``_shard_on_cpu``).
With one process both choices run the plain model (nothing to shard).
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from polycom.train.validate import ConfigError

log = logging.getLogger(__name__)

CHOICES = ("ddp", "fsdp")
WRAP_UNIT = "DecoderLayer"  # the transformer block class of polycom.model.modeling
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_parallel_config(parallel_cfg) -> None:
    """Clear errors naming the key, before anything is built."""
    if parallel_cfg.name not in CHOICES:
        raise ConfigError(f"parallel.name={parallel_cfg.name!r} is not one of {', '.join(CHOICES)} (configs/parallel)")
    if parallel_cfg.param_dtype is not None and parallel_cfg.param_dtype not in DTYPES:
        raise ConfigError(f"parallel.param_dtype={parallel_cfg.param_dtype!r} is not null or one of "
                          f"{', '.join(DTYPES)}")
    if parallel_cfg.reduce_dtype not in DTYPES:
        raise ConfigError(f"parallel.reduce_dtype={parallel_cfg.reduce_dtype!r} is not one of {', '.join(DTYPES)}")


def fsdp_plugin(parallel_cfg) -> FullyShardedDataParallelPlugin:
    """FSDP2 with every field given explicitly (an ``accelerate launch`` FSDP config's ``FSDP_*`` variables would
    otherwise fill the ones left out)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    param_dtype = DTYPES[parallel_cfg.param_dtype] if parallel_cfg.param_dtype is not None else None
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        reshard_after_forward=parallel_cfg.reshard_after_forward,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[WRAP_UNIT],
        mixed_precision_policy=MixedPrecisionPolicy(param_dtype=param_dtype,
                                                    reduce_dtype=DTYPES[parallel_cfg.reduce_dtype]),
        state_dict_type="SHARDED_STATE_DICT",  # checkpoints: each process writes its shards (torch DCP)
        cpu_ram_efficient_loading=True,  # rank 0's initial weights, broadcast into the shards
        cpu_offload=False,
        activation_checkpointing=False,
    )


def _launched_with_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def build_accelerator(trainer_cfg, parallel_cfg) -> Accelerator:
    """The run's Accelerator: device and mixed precision from ``trainer``, DDP or FSDP2 from ``parallel``."""
    check_parallel_config(parallel_cfg)
    cpu = trainer_cfg.device == "cpu" or (trainer_cfg.device == "auto" and not torch.cuda.is_available())
    fsdp = parallel_cfg.name == "fsdp"
    if _launched_with_fsdp() and not fsdp:
        raise ConfigError("launched with an FSDP accelerate config (ACCELERATE_USE_FSDP=true) but parallel=ddp: add "
                          "parallel=fsdp (its settings come from configs/parallel/fsdp.yaml)")
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if fsdp and not several:
        log.warning("parallel=fsdp with one process: nothing to shard, the plain model is trained")
    plugin = fsdp_plugin(parallel_cfg) if fsdp and several else None
    accelerator = Accelerator(cpu=cpu, mixed_precision=trainer_cfg.mixed_precision, fsdp_plugin=plugin)
    if plugin is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        _shard_on_cpu(plugin)
    if plugin is not None and not accelerator.is_fsdp2:
        raise RuntimeError(f"parallel=fsdp asked for FSDP2 but Accelerate runs {accelerator.distributed_type}")
    return accelerator


def _shard_on_cpu(plugin: FullyShardedDataParallelPlugin) -> None:
    """Make Accelerate prepare, clip, save and load the model as FSDP2 on CPU processes (gloo).

    Accelerate switches to FSDP only when the distributed type is one of an accelerator device
    (``AcceleratorState.__init__``); here the switch is made after the fact, in both shared states (every new
    ``AcceleratorState()`` copies ``PartialState``'s). Under FSDP Accelerate's collectives take the same torch
    calls as under ``MULTI_CPU`` (barriers pass ``device_ids``, which gloo accepts); the device stays the CPU."""
    AcceleratorState().fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState().distributed_type = DistributedType.FSDP

"""Structured-config schema of ``configs/train.yaml``.

Registered with Hydra's ConfigStore as ``train_schema`` and placed first in the defaults list, so every
YAML file is merged into these dataclasses: a misspelled key or a value of the wrong type fails at
startup with an error naming the key. ``validate_config`` then checks what types cannot (ranges,
consistency between groups) before any model or data is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from polycom.data.config import DataConfig, TokenizerConfig
from polycom.model.config import ActivationSchema, ModelSchema


@dataclass
class OptimConfig:
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    embedding_weight_decay: bool = False  # decay the token embeddings (and an untied head) too
    fused: Optional[bool] = None  # torch AdamW's fused kernel; None = torch's default


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | wsd | constant
    warmup_steps: Optional[int] = None  # the first set of warmup_steps / warmup_tokens / warmup_fraction wins
    warmup_tokens: Optional[int] = None
    warmup_fraction: Optional[float] = 0.02
    min_lr_ratio: float = 0.1  # final lr / peak lr (cosine and wsd)
    decay_fraction: float = 0.2  # wsd: share of training spent in the final decay


@dataclass
class TrainerConfig:
    seq_len: int = 256
    micro_batch_size: int = 8  # sequences per process per forward
    global_batch_size: int = 16  # sequences per optimizer step, over all processes and accumulation
    max_steps: Optional[int] = None  # the budget: max_steps if set, else max_tokens
    max_tokens: Optional[int] = None
    grad_clip: Optional[float] = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16
    compile: bool = False
    # what each decoder layer keeps for backward: none | activation (FFN elementwise ops recomputed) | full
    # (each layer recomputed); polycom.model.checkpointing, memory per mode: scripts/estimate_memory.py
    activation_checkpointing: str = "none"
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_interval: Optional[int] = 1000
    keep_checkpoints: int = 2
    resume: Optional[str] = None  # null | auto | <checkpoint or run directory>
    # settings a resume may change although they change what is trained (keys or prefixes, e.g. [seed, data]);
    # recorded in summary.json. Without them such a resume is refused (polycom.config_diff).
    resume_allow_changes: List[str] = field(default_factory=list)
    stop_after: Optional[int] = None  # end this session after N steps (checkpointed); resume later
    log_interval: int = 10
    progress_bar: bool = True
    max_consecutive_nonfinite: int = 5
    save_hf: bool = True


@dataclass
class ParallelConfig:
    """configs/parallel (polycom/train/parallel.py): how the model is spread over the processes."""

    name: str = "ddp"  # ddp | fsdp (FSDP2); one process runs the plain model either way
    # fsdp only:
    reshard_after_forward: bool = True  # free a layer's gathered weights after its forward (gathered again in backward)
    param_dtype: Optional[str] = None  # gathered weights in forward/backward: null = as stored (fp32) | bfloat16
    reduce_dtype: str = "float32"  # gradient reduce-scatter (DDP's all-reduce is fp32)


@dataclass
class EvalConfig:
    interval: Optional[int] = 200  # validation every N steps (and always at the end)
    val_tokens: int = 65536  # fixed held-out budget, the same tokens for every run
    batch_size: int = 8
    downstream: List[str] = field(default_factory=list)  # task names, see polycom.eval
    downstream_limit: Optional[int] = 200  # examples per task (per subject for mmlu)
    downstream_interval: Optional[int] = None  # steps between in-loop downstream evals (None: end only)
    downstream_batch_size: int = 16
    # an example whose answer alone is longer than the model's window: skip (left out and counted) | error
    downstream_too_long: str = "skip"
    data_dir: Optional[str] = None  # local downstream sets; None = the Hugging Face Hub


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | none
    project: str = "polycom"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    run_name: Optional[str] = None  # None: <activation>-s<seed>


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: Optional[str] = None
    log_dir: str = "outputs"
    cache_dir: str = ".cache"


@dataclass
class LadderConfig:
    """A compute-ladder run's rung and budget (configs/ladder/, scripts/ladder.py); empty outside a ladder.

    A rung file holds its tables and the ladder experiment looks this run's values up in them by interpolation
    (``trainer.max_tokens: ${ladder.budgets.${ladder.budget}}``, ``optim.lr: ${ladder.lr.${activation.name}}``),
    so a multirun over rungs, budgets, activations and seeds needs no arithmetic in the configs."""

    name: Optional[str] = None  # the ladder (cpu, gpu)
    rung: Optional[str] = None  # r1 (the smallest), r2, ...
    params: Optional[int] = None  # the rung's N: non-embedding parameters of its SwiGLU model; budgets are per N
    budget: Optional[str] = None  # this run's budget, a key of ``budgets``
    budgets: Dict[str, int] = field(default_factory=dict)  # budget name (t<tokens per parameter>) -> tokens
    lr: Dict[str, float] = field(default_factory=dict)  # activation -> its peak lr at this rung (the lr rule)


@dataclass
class TrainConfig:
    task_name: str = "train"
    seed: int = 0
    model: ModelSchema = field(default_factory=ModelSchema)  # type: ignore[valid-type]
    activation: ActivationSchema = field(default_factory=ActivationSchema)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)


def _subdir(base: Optional[str], name: str) -> Optional[str]:
    """``${subdir:${paths.data_dir},downstream}``: base/name, or null when base is null."""
    return None if base in (None, "None", "null") else f"{base}/{name}"


def register_schema() -> None:
    """Register the schema, the ``subdir`` resolver and the sweep-folder resolver of ``polycom.sweeps``
    (idempotent)."""
    from polycom.sweeps import register_resolver

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("subdir"):
        OmegaConf.register_new_resolver("subdir", _subdir)
    register_resolver()

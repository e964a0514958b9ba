"""One process group from the tasks of a submitit job: each task of the job is one rank.

Hydra's submitit launcher (``hydra/launcher=slurm_multi_gpu``, ``slurm_multi_node``, ``local_multi_gpu``) runs the
whole Hydra job in every task of a job -- ``srun`` starts ``nodes x tasks_per_node`` of them, submitit's local
executor ``tasks_per_node`` -- with the same config and the same output folder (Hydra computes it from the
config pickled by the submitting process, timestamps included). Without more, each task would train alone.
``join_submitit_job`` exports what ``torchrun`` would, so the ``Accelerator`` the trainer builds joins one
process group through torch.distributed's ``env://`` rendezvous:

    RANK = SLURM_PROCID    LOCAL_RANK = SLURM_LOCALID    WORLD_SIZE = SLURM_NTASKS
    LOCAL_WORLD_SIZE = SLURM_NTASKS / SLURM_JOB_NUM_NODES    MASTER_ADDR = first host of SLURM_JOB_NODELIST
    MASTER_PORT = $MASTER_PORT if set, else a port in [20000, 60000] drawn from the job id (the same in every
    task of a job, another for each job of an array)

(submitit's local executor: its SUBMITIT_LOCAL_* variables, this host). The mapping is submitit's own
(``submitit.helpers.TorchDistributedEnvironment``). ``CUDA_VISIBLE_DEVICES`` is left as SLURM set it: Accelerate
puts each rank on GPU ``LOCAL_RANK % visible GPUs``, which is right both when every task sees all GPUs of its node
(``gpus_per_node``, the launcher configs) and when SLURM binds one GPU to each task (``gpus_per_task: 1``).

Every task also runs Hydra's job setup: ``.hydra/`` is written by each with identical content, and each opens
the job's log file. Ranks other than 0 move their file logging to ``<log>.rank<r>.log`` (``train.rank1.log``
beside ``train.log``), so ``train.log`` is rank 0's alone. Metrics, W&B, ``config.yaml`` and ``summary.json`` are
written by rank 0 only (the trainer's ``is_main``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def join_submitit_job() -> int | None:
    """Inside a submitit task of a job with several tasks, export RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT for it and return its rank; anywhere else (a plain run, ``accelerate launch``,
    ``torchrun``, a one-task job) change nothing and return None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):  # set by submitit's sbatch script and local executor only
        return None
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks < 2:
        return None
    # overwrite: variables inherited from the submitting shell (a job submitted from inside another) are stale here
    dist = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if dist.rank != 0:
        log_to_rank_file(dist.rank)
    log.info("submitit task: rank %d of %d (local rank %d of %d), rendezvous at %s:%d", dist.rank, dist.world_size,
             dist.local_rank, dist.local_world_size, dist.master_addr, dist.master_port)
    return dist.rank


def log_to_rank_file(rank: int) -> None:
    """Move the root logger's file handlers from ``<name>.log`` to ``<name>.rank<rank>.log`` (same folder, level and
    format), so that several ranks never write one log file."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if not isinstance(handler, logging.FileHandler):
            continue
        path = Path(handler.baseFilename)
        moved = logging.FileHandler(path.with_name(f"{path.stem}.rank{rank}{path.suffix}"), mode=handler.mode,
                                    encoding=handler.encoding)
        moved.setLevel(handler.level)
        moved.setFormatter(handler.formatter)
        for f in handler.filters:
            moved.addFilter(f)
        root.removeHandler(handler)
        handler.close()
        root.addHandler(moved)

"""Metrics sinks: ``metrics.jsonl`` in the run directory (always) and the logger named by ``logger.name``.

Only rank 0 logs. Each record is flushed as it is written, so a crash loses nothing already logged. On resume
(and on a fresh start in a folder a killed run left), records after the starting step are dropped first: those
steps are trained and logged again. A new logger is a class with ``log`` / ``summary`` / ``close`` registered in
``SINKS`` plus a ``configs/logger/<name>.yaml``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path

from polycom.runs import METRICS, run_name

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id.txt"


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlSink:
    """``metrics.jsonl``: one JSON object per logged step."""

    def __init__(self, run_dir: Path, resume_step: int):
        self.path = Path(run_dir) / METRICS
        self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by a kill mid-write
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def summary(self, values: dict) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        self._file.close()


class WandbSink:
    """A W&B run per training run (id kept in the run folder, so a resumed run continues the same W&B run)."""

    def __init__(self, run_dir: Path, cfg, run_name: str, group: str | None, config: dict):
        import wandb

        id_file = Path(run_dir) / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        mode = os.environ.get("WANDB_MODE", cfg.mode)
        self._run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=run_name, group=group, tags=list(cfg.tags),
            config=config, dir=str(run_dir), id=run_id, resume="allow", mode=mode,
            # every Hydra multirun job is its own run, never merged into the previous one
            reinit="finish_previous",
        )

    def log(self, record: dict) -> None:
        self._run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def summary(self, values: dict) -> None:
        for k, v in values.items():
            self._run.summary[k] = v

    def close(self, exit_code: int = 0) -> None:
        self._run.finish(exit_code=exit_code)


SINKS = {"wandb": WandbSink}  # logger.name -> sink beside metrics.jsonl ("none": metrics.jsonl only)


def default_run_name(cfg) -> str:
    """The run's name when ``logger.run_name`` is unset: ``polycom.runs.run_name`` with the activation's settings
    that differ from the defaults (``polyrelu-r2-s0`` for order 2, ``polynorm-s0-eps1e-05`` for another eps)."""
    from polycom.model.activations import get_activation
    from polycom.model.config import ActivationSchema

    act = cfg.activation
    polycom = get_activation(act.name).polycom
    variant = f"eps{act.eps:g}" if polycom and act.eps != ActivationSchema.eps else None
    return run_name(act.name, cfg.seed, act.order if polycom else None, variant)


def run_group(cfg, hydra_cfg=None) -> str:
    """The W&B group: ``logger.group`` when set (the experiment files set it); the jobs of a Hydra sweep share
    ``<task_name>-<sweep folder>``; a single run gets ``<task_name>-<model>-<data>``, the config group choices
    (``train-cpu_small-embedded``) when Hydra composed the config (``hydra_cfg``), else its size and source."""
    if cfg.logger.group:
        return cfg.logger.group
    from hydra.types import RunMode

    if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN:
        return f"{cfg.task_name}-{Path(str(hydra_cfg.sweep.dir)).name}"
    choices = dict(hydra_cfg.runtime.choices) if hydra_cfg is not None else {}
    model = choices.get("model") or f"d{cfg.model.hidden_size}x{cfg.model.num_hidden_layers}"
    data = choices.get("data") or cfg.data.source
    return f"{cfg.task_name}-{model}-{data}"


class MetricsLogger:
    """Fans every record out to ``metrics.jsonl`` and the configured logger (rank 0 only)."""

    def __init__(self, run_dir: Path, logger_cfg, run_name: str, group: str | None, config: dict,
                 enabled: bool = True, resume_step: int = 0):
        self.sinks = []
        if not enabled:
            return
        self.sinks.append(JsonlSink(run_dir, resume_step))
        if logger_cfg.name in SINKS and logger_cfg.mode != "disabled":
            log.info("%s run %s in group %s (project %s, %s)", logger_cfg.name, run_name, group, logger_cfg.project,
                     os.environ.get("WANDB_MODE", logger_cfg.mode))
            self.sinks.append(SINKS[logger_cfg.name](Path(run_dir), logger_cfg, run_name, group, config))

    def log(self, record: dict) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        for sink in self.sinks:
            sink.log(record)

    def summary(self, values: dict) -> None:
        values = {k: _jsonable(v) for k, v in values.items()}
        for sink in self.sinks:
            sink.summary(values)

    def close(self, exit_code: int = 0) -> None:
        for sink in self.sinks:
            sink.close(exit_code)
        self.sinks = []

"""Metrics sinks: ``metrics.jsonl`` in the run directory (always) and Weights & Biases (``logger=wandb``).

Only rank 0 logs. Each record is flushed as it is written, so a crash loses nothing already logged.
On resume, records after the checkpoint's step are dropped first: those steps are trained and logged again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id.txt"


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    def __init__(self, run_dir: Path, logger_cfg, run_name: str, group: str | None, config: dict,
                 enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb_run = None
        if not enabled:
            return
        if resume_step is not None:
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if logger_cfg.name == "wandb" and logger_cfg.mode != "disabled":
            self._wandb_run = self._init_wandb(Path(run_dir), logger_cfg, run_name, group, config)

    @staticmethod
    def _init_wandb(run_dir: Path, cfg, run_name: str, group: str | None, config: dict):
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        mode = os.environ.get("WANDB_MODE", cfg.mode)
        return wandb.init(
            project=cfg.project, entity=cfg.entity, name=run_name, group=group, tags=list(cfg.tags),
            config=config, dir=str(run_dir), id=run_id, resume="allow", mode=mode,
            # every Hydra multirun job is its own run, never merged into the previous one
            reinit="finish_previous",
        )

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
        if not self.enabled:
            return
        record = {k: _jsonable(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def summary(self, values: dict) -> None:
        if self._wandb_run is not None:
            for k, v in values.items():
                self._wandb_run.summary[k] = _jsonable(v)

    def close(self, exit_code: int = 0) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish(exit_code=exit_code)
            self._wandb_run = None

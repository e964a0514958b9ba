"""``train.py`` as it is, with spies (test-only; run under ``accelerate launch``, see tests/test_distributed.py).

    train_spy.py <report dir> <train.py overrides...>

Runs the project's own ``train()`` through ``train.py`` and writes ``<report dir>/rank<r>.json`` with what the
spies saw on that process: how the model was wrapped at the first update (parameter classes, the share of the
parameters held locally) and, per downstream task evaluation, how many requests this rank scored and how many
forward passes it ran.

``POLYCOM_SPY_GLOBAL_ORDER=<blocks per optimizer step>`` feeds the ranks the one-process data order instead of
their own shards (rank r takes the r-th contiguous slice of every global batch of the one-process stream), to
separate the effect of the data order from the rest when comparing process counts.
"""

import json
import os
import runpy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # this checkout's polycom, as train.py itself would import it

import polycom.eval.scorer as scorer  # noqa: E402
import polycom.train.trainer as trainer  # noqa: E402

report_dir = Path(sys.argv[1])
report: dict = {"eval_shares": [], "eval_forwards": []}


def _write() -> None:
    (report_dir / f"rank{report.get('rank', os.environ.get('RANK', 0))}.json").write_text(json.dumps(report))


def _describe(model, accelerator) -> dict:
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)
    return {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type), "model_class": type(model).__name__,
            "param_classes": sorted({type(p).__name__ for p in params}),
            "placements": sorted({str(p.placements) for p in params if isinstance(p, DTensor)}),
            "local_numel": local, "numel": sum(p.numel() for p in params)}


real_train_step = trainer.train_step


def train_step(model, optimizer, accelerator, micro_batches, grad_clip):
    if "param_classes" not in report:
        report.update(_describe(model, accelerator))
        _write()
    return real_train_step(model, optimizer, accelerator, micro_batches, grad_clip)


real_score_encoded, real_score_batch = scorer._score_encoded, scorer._score_batch


def score_encoded(model, encoded, *args, **kwargs):
    report["eval_shares"].append(len(encoded))  # requests this rank scores, per task and evaluation
    report["eval_forwards"].append(0)
    return real_score_encoded(model, encoded, *args, **kwargs)


def score_batch(model, batch, *args, **kwargs):
    report["eval_forwards"][-1] += 1
    _write()
    return real_score_batch(model, batch, *args, **kwargs)


trainer.train_step = train_step
scorer._score_encoded, scorer._score_batch = score_encoded, score_batch


class OneProcessOrder:
    """Rank ``rank``'s slice of every global batch of the one-process stream; the stream's other attributes (data
    statistics) are the one-process stream's."""

    def __init__(self, stream, rank: int, share: int, per_step: int):
        self.stream, self.rank, self.share, self.per_step, self.index = stream, rank, share, per_step, 0

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            block, index = next(self.stream), self.index
            self.index += 1
            if (index % self.per_step) // self.share == self.rank:
                return block

    def __getattr__(self, name):
        return getattr(self.stream, name)


if os.environ.get("POLYCOM_SPY_GLOBAL_ORDER"):
    per_step = int(os.environ["POLYCOM_SPY_GLOBAL_ORDER"])
    real_train_blocks = trainer.train_blocks

    def train_blocks(data_cfg, tokenizer, seq_len, seed, rank=0, world_size=1, start_block=0, position=None):
        # position (this rank's saved stream position) is of the one-process stream here: fast-forward instead
        share = per_step // world_size
        stream = real_train_blocks(data_cfg, tokenizer, seq_len, seed, 0, 1, start_block // share * per_step)
        return OneProcessOrder(stream, rank, share, per_step)

    trainer.train_blocks = train_blocks

sys.argv = ["train.py", *sys.argv[2:]]
runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")

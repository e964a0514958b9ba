"""Write this project's downstream tasks as lm-eval task YAMLs on local data, for the stock ``lm_eval`` CLI.

    python scripts/lm_eval_tasks.py --out-dir lm_eval_tasks --tasks arc_easy,piqa,blimp [--data-dir DIR] [--limit N]
    lm_eval run --model hf --model_args pretrained=<run>/hf,trust_remote_code=True \\
        --include_path lm_eval_tasks --tasks polycom_arc_easy,polycom_piqa,polycom_blimp

The tasks are named ``polycom_<task>`` and score exactly the requests ``scripts/evaluate.py`` scores (prompts
rendered by ``polycom.eval.tasks``); ``--data-dir`` defaults to ``$POLYCOM_DATA_DIR/downstream``. Without a
local copy, lm-eval's own Hub tasks (``--tasks arc_easy,piqa``) run as they are, with the differences listed
in the README.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from polycom.eval import TASKS
from polycom.eval.lm_eval_bridge import write_task_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--tasks", default="arc_easy,piqa,sciq,blimp,lambada")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="render only the first N rows of each table")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; valid: {', '.join(TASKS)}")
    data_dir = args.data_dir
    if data_dir is None:
        if not os.environ.get("POLYCOM_DATA_DIR"):
            parser.error("give --data-dir (a folder laid out like shared/data/downstream) or set POLYCOM_DATA_DIR")
        data_dir = Path(os.environ["POLYCOM_DATA_DIR"]) / "downstream"
    names = write_task_folder(tasks, data_dir, args.out_dir, limit=args.limit)
    print(f"wrote {len(names)} task(s) to {args.out_dir}: --include_path {args.out_dir} --tasks {','.join(names)}")


if __name__ == "__main__":
    main()

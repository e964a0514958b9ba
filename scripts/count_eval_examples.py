"""How many examples of each downstream task a run scored, and how many it left out because an answer does not fit
the model's window: the counts that ``summary.json`` holds for runs trained since they were recorded
(``<task>/n``, ``<task>/too_long``, ``<task>/skipped``), recomputed for a run that predates them.

    python scripts/count_eval_examples.py experiments/<study>/runs/* [--write]

No model is needed: which examples fit depends only on the run's tokenizer (rebuilt from its ``config.yaml``; the
BPE is cached), its window (``model.max_position_embeddings``) and the task data (``eval.data_dir``,
``eval.downstream_limit``), exactly as the trainer's end-of-run evaluation decided. ``--write`` adds the counts to each
``summary.json``; a count the summary already holds must agree, or the script stops. BLiMP ties (``blimp/ties``)
need the model's scores and are not recomputed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from polycom.runs import CONFIG, SUMMARY


def count_examples(cfg) -> dict[str, int]:
    """``{"<task>/n", "<task>/too_long", "<task>/skipped"}`` for the run config's downstream tasks."""
    from polycom.data import build_tokenizer
    from polycom.eval.downstream import _fitting_examples, load_examples
    from polycom.eval.tasks import get_task

    tokenizer = build_tokenizer(cfg.tokenizer, cfg.data)
    window = int(cfg.model.max_position_embeddings)
    counts = {}
    for name in cfg.eval.downstream:
        task = get_task(name)
        examples, skipped = load_examples(task, cfg.eval.data_dir, cfg.eval.downstream_limit, skip_bad_rows=False)
        kept, _, dropped = _fitting_examples(task, examples, tokenizer, window, "skip")
        counts.update({f"{name}/n": len(kept), f"{name}/too_long": dropped, f"{name}/skipped": skipped})
    return counts


def main(argv=None) -> dict[str, dict[str, int]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (config.yaml and summary.json)")
    parser.add_argument("--write", action="store_true", help="add the counts to each run's summary.json")
    args = parser.parse_args(argv)
    cached: dict[str, dict[str, int]] = {}
    found = {}
    for run in args.runs:
        if not (run / CONFIG).is_file() or not (run / SUMMARY).is_file():
            parser.error(f"{run} is not a run folder: it needs {CONFIG} and {SUMMARY}")
        cfg = OmegaConf.load(run / CONFIG)
        if not cfg.eval.downstream:
            print(f"{run}: no downstream tasks")
            continue
        # runs of one study share tokenizer, window and tasks: count once per distinct setting
        key = json.dumps([OmegaConf.to_container(cfg[k], resolve=True) for k in ("tokenizer", "data", "eval")]
                         + [cfg.model.max_position_embeddings], sort_keys=True, default=str)
        if key not in cached:
            cached[key] = count_examples(cfg)
        counts = found[str(run)] = cached[key]
        print(f"{run}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        if args.write:
            summary = json.loads((run / SUMMARY).read_text())
            clash = {k: (summary[k], v) for k, v in counts.items() if k in summary and summary[k] != v}
            if clash:
                raise SystemExit(f"{run}/{SUMMARY} already holds other counts (summary, recomputed): {clash}")
            (run / SUMMARY).write_text(json.dumps({**summary, **counts}, indent=2))  # as the trainer writes it
    return found


if __name__ == "__main__":
    main()

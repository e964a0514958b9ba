"""Peak GPU memory and FLOPs per token of one training step, without a GPU (fake tensors: nothing is allocated).

    python scripts/estimate_memory.py [--world-size N] [--gpu-memory-gib 80] [--headroom 0.1] [--vocab-size V]
                                      [--json FILE] <train.py overrides>
    python scripts/estimate_memory.py --world-size 8 experiment=paper_dense_1b
    python scripts/estimate_memory.py --world-size 8 experiment=paper_moe_1b7b trainer.activation_checkpointing=none

The config is composed and validated as train.py does it (the world size is the number of processes
``accelerate launch`` would start); the parallelism is the config's ``parallel`` group. Prints the peak per GPU
with its breakdown; ``--json`` writes it (``peak_bytes_per_gpu``, ``fits``, ``breakdown``, ``flops``, ...). Exit
status 0 when it fits, 1 when it does not, 2 for a config error or a config the estimator cannot run. How it
works: polycom/train/memory.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=1, help="processes (GPUs) of the run (default 1)")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU (default 80)")
    parser.add_argument("--headroom", type=float, default=0.1,
                        help="share of the GPU kept free for the CUDA context and fragmentation, in [0, 1) "
                             "(default 0.1)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="the tokenizer's size, len(tokenizer), padded to a multiple of 64 as the trainer pads "
                             "it (default: from the tokenizer config)")
    parser.add_argument("--json", default=None, help="write the estimate here")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. experiment=paper_dense_1b")
    args = parser.parse_args(argv)

    from polycom.train.build import compose_config
    from polycom.train.memory import estimate_memory
    from polycom.train.validate import ConfigError

    try:
        estimate = estimate_memory(compose_config(args.overrides), world_size=args.world_size,
                                   gpu_memory_gib=args.gpu_memory_gib, headroom=args.headroom,
                                   vocab_size=args.vocab_size)
    except (ConfigError, ValueError, NotImplementedError) as err:  # NotImplementedError: what fake tensors cannot run
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(estimate.table())
    if args.json:
        Path(args.json).write_text(json.dumps({**estimate.to_dict(), "overrides": args.overrides}, indent=2))
    return 0 if estimate.fits else 1


if __name__ == "__main__":
    sys.exit(main())

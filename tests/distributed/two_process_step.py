"""Run under two processes (see tests/test_distributed.py); writes a JSON report per rank.

Checks that (1) the ranks' training streams hold disjoint documents and (2) one DDP step of the trainer's
``train_step`` over a global batch split across ranks (with gradient accumulation) updates the weights as
a plain one-process AdamW step over the same examples does.
"""

import copy
import json
import re
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from omegaconf import OmegaConf

from polycom.data import DataConfig, train_blocks
from polycom.model import PolyComConfig, PolyComForCausalLM
from polycom.train.optim import build_optimizer
from polycom.train.trainer import train_step

out_dir, corpus_glob, tokenizer_dir = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
accelerator = Accelerator(cpu=True)
rank, world = accelerator.process_index, accelerator.num_processes
report = {"rank": rank, "world_size": world}

# (1) disjoint data: documents are tagged "doc-<n>" in the corpus the test wrote
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
data_cfg = OmegaConf.structured(DataConfig(source="local", train_files=[corpus_glob], validation_fraction=0.1,
                                           shuffle_buffer=16, tokenize_batch_size=8))
stream = train_blocks(data_cfg, tokenizer, 64, seed=0, rank=rank, world_size=world)
seen = set()
for _, block in zip(range(12), stream):
    seen.update(int(n) for n in re.findall(r"doc-(\d+)\b", tokenizer.decode(block)))
gathered = [None] * world
dist.all_gather_object(gathered, sorted(seen))
report["docs_per_rank"] = gathered

# (2) gradient averaging with accumulation
config = PolyComConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=32, activation="polynorm")
optim_cfg = OmegaConf.create({"lr": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
                              "embedding_weight_decay": False, "fused": None})
torch.manual_seed(0)
model = PolyComForCausalLM(config)
reference = copy.deepcopy(model)
initial = copy.deepcopy(model.state_dict())
optimizer = build_optimizer(model, optim_cfg)
model, optimizer = accelerator.prepare(model, optimizer)
global_batch = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(1))
mine = global_batch[rank * 4 : (rank + 1) * 4]
train_step(model, optimizer, accelerator, [mine[:2], mine[2:]], grad_clip=0.5)

ref_optimizer = build_optimizer(reference, optim_cfg)
reference(global_batch, labels=global_batch).loss.backward()
torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
ref_optimizer.step()
trained = accelerator.unwrap_model(model).state_dict()
report["max_abs_diff"] = max((trained[k] - v).abs().max().item() for k, v in reference.state_dict().items())
report["max_update"] = max((trained[k] - v).abs().max().item() for k, v in initial.items())
(out_dir / f"rank{rank}.json").write_text(json.dumps(report))
accelerator.end_training()

"""The engine Alpaca trained with — torch FSDP, full sharding, bf16 mixed precision — as a reference for ZeRO-3.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_reference.py INIT_DIR DATASET OUT.jsonl \
        STEPS MICRO ACCUM LR WARMUP TOTAL SEED

Same initial weights, same batches (alpaca-ds's sampler and collator: the input, not the thing under test), AdamW,
Alpaca's cosine schedule with warmup and gradient clipping 1.0; writes the mean loss of every optimizer step.
"""
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

from alpaca_ds.dataset.collate import collate
from alpaca_ds.dataset.sampler import MicroBatchSampler
from alpaca_ds.dataset.shards import TokenizedDataset


def main(init_dir, dataset, out, steps, micro, accum, lr, warmup, total, seed):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32, attn_implementation="sdpa")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:  # auto_wrap: one FSDP unit per decoder layer, as Alpaca's LlamaDecoderLayer
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    data = TokenizedDataset(dataset)
    pad_id = data.manifest["tokenizer"]["pad_token_id"]
    sampler = MicroBatchSampler(data.lengths, micro, world_size=world, rank=rank, seed=seed, accumulation=accum)
    losses, step = [], 0
    with open(out, "w") if rank == 0 else open("/dev/null", "w") as f:
        while step < steps:
            sampler.set_epoch(sampler.epoch if sampler.position < len(sampler) else sampler.epoch + 1)
            for rows in sampler:
                batch = collate([[data[i] for i in row] for row in rows], pad_id)
                loss = model(**batch).loss
                (loss / accum).backward()
                losses.append(loss.item())
                if sampler.position % accum:
                    continue
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                mean = torch.tensor([sum(losses), len(losses)], dtype=torch.float64)
                dist.all_reduce(mean)
                losses, step = [], step + 1
                f.write(json.dumps({"step": step, "loss": float(mean[0] / mean[1])}) + "\n")
                if step == steps:
                    break
    dist.destroy_process_group()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), float(a[6]), int(a[7]), int(a[8]), int(a[9]))

"""The engine Alpaca trained with — torch FSDP, full sharding, bf16 mixed precision — as a reference for ZeRO-3.

    python -m torch.distributed.run --nproc_per_node 2 tests/helpers/fsdp_reference.py --config RECIPE [--set K=V ...]

Reads the same recipe as `alpaca_ds.train` and trains what it describes the way Alpaca did: the model from
`model.name_or_path` (fp32 masters) or a random one from `model.init_config`, one FSDP unit per decoder layer plus
the root, bf16 parameters with fp32 gradient reduction, AdamW, the cosine schedule with warmup, gradient clipping.
The batches come from alpaca-ds's sampler and collator (the input, not the thing under test). Rank 0 writes
`output_dir/metrics.jsonl` with the trainer's per-step fields: step, loss (mean over the step's micro-batches),
tokens, real_tokens and seconds (batch assembly, forward, backward and optimizer step). Used by
tests/integration/test_train.py (losses) and benchmarks/bench_train.py (throughput).

Not read from the recipe: ds_config (this is always FSDP full shard with bf16), model.gradient_checkpointing,
validation, checkpoints, and log.every_steps (every step is written), so it refuses log.every_steps other than 1.
"""

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

from alpaca_ds.config import load_config
from alpaca_ds.dataset.collate import collate
from alpaca_ds.dataset.sampler import MicroBatchSampler
from alpaca_ds.dataset.shards import TokenizedDataset
from alpaca_ds.train.config import TrainConfig
from alpaca_ds.train.model import resize_with_mean_rows


def build_model(cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    m = cfg.model
    if m.name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(
            m.name_or_path, dtype=torch.float32, attn_implementation=m.attn_implementation
        )
    else:
        torch.manual_seed(m.init_seed)
        model = LlamaForCausalLM(LlamaConfig(**m.init_config, attn_implementation=m.attn_implementation))
    resize_with_mean_rows(model, vocab_size)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:  # auto_wrap: one FSDP unit per decoder layer, as Alpaca's LlamaDecoderLayer
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def main(config: str, sets: list[str]) -> None:
    cfg = load_config(TrainConfig, config, sets)
    if cfg.log.every_steps != 1:
        raise SystemExit("fsdp_reference: writes every step; set log.every_steps=1 to compare with the trainer")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    micro, accum = cfg.batch.resolve(world)
    data = TokenizedDataset(cfg.data.path, "train")
    pad_id = data.manifest["tokenizer"]["pad_token_id"]
    sampler = MicroBatchSampler.from_config(data.lengths, cfg.data, micro, accum, world_size=world, rank=rank)
    o = cfg.optim
    total = min(o.epochs * (len(sampler) // accum), o.max_steps or math.inf)
    model = build_model(cfg, data.manifest["tokenizer"]["vocab_size"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(o.warmup_ratio * total), total)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    losses, tokens, real, step, start = [], 0, 0, 0, time.time()
    with open(run_dir / "metrics.jsonl", "w") if rank == 0 else open(os.devnull, "w") as f:
        while step < total:
            sampler.set_epoch(sampler.epoch if sampler.position < len(sampler) else sampler.epoch + 1)
            for rows in sampler:
                batch = collate([[data[i] for i in row] for row in rows], pad_id)
                loss = model(**batch).loss
                (loss / accum).backward()
                losses.append(loss.item())
                tokens += int(batch["input_ids"].numel())
                real += sum(int(data.lengths[row].sum()) for row in rows)
                if sampler.position % accum:
                    continue
                if o.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                sums = torch.tensor([sum(losses), len(losses), tokens, real], dtype=torch.float64)
                dist.all_reduce(sums)
                step += 1
                f.write(
                    json.dumps(
                        {
                            "step": step,
                            "loss": float(sums[0] / sums[1]),
                            "tokens": int(sums[2]),
                            "real_tokens": int(sums[3]),
                            "seconds": round(time.time() - start, 3),
                        }
                    )
                    + "\n"
                )
                f.flush()
                losses, tokens, real, start = [], 0, 0, time.time()
                if step == total:
                    break
    dist.barrier()  # both ranks done before teardown (a rank leaving early can abort in gloo's teardown)
    dist.destroy_process_group()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    main(args.config, args.sets)

"""LoRA written out in plain torch, as a reference for the trainer's peft + DeepSpeed LoRA.

Each targeted Linear's output gets (x·Aᵀ·Bᵀ)·alpha/r added by a forward hook; the base is frozen in bf16 and A,
B are fp32 masters used in bf16, as DeepSpeed's bf16 engine keeps them. One process plays every rank: per
micro-step it runs each rank's micro-batch (from alpaca-ds's sampler and collator, the input, not the thing under
test) and averages the gradients over ranks and accumulation steps, as data parallelism does; then clipping,
AdamW and the cosine schedule with warmup. No dropout (the comparison needs model.lora.dropout 0).
"""

from __future__ import annotations

import math

import torch
from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

from alpaca_ds.dataset.collate import collate
from alpaca_ds.dataset.sampler import MicroBatchSampler
from alpaca_ds.dataset.shards import TokenizedDataset
from alpaca_ds.train.config import TrainConfig
from alpaca_ds.train.model import resize_with_mean_rows


def base_model(cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    """The pretrained model in bf16 with Alpaca's added rows, as the trainer loads it."""
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, dtype=torch.bfloat16)
    resize_with_mean_rows(model, vocab_size)
    return model


def train(cfg: TrainConfig, init: dict[str, tuple[torch.Tensor, torch.Tensor]], world: int) -> list[float]:
    """Losses per optimizer step; `init` maps each targeted module's name to its initial (A, B)."""
    lora = cfg.model.lora
    assert lora.dropout == 0 and not lora.modules_to_save, "the reference has no dropout and no modules_to_save"
    data = TokenizedDataset(cfg.data.path, "train", train_on_prompt=cfg.data.train_on_prompt)
    pad_id = data.manifest["tokenizer"]["pad_token_id"]
    model = base_model(cfg, data.manifest["tokenizer"]["vocab_size"])
    model.requires_grad_(False)
    modules = dict(model.named_modules())
    scale = lora.alpha / lora.r
    params = []
    for name, (a, b) in init.items():
        a, b = (torch.nn.Parameter(t.detach().float().clone()) for t in (a, b))
        params += [a, b]
        modules[name].register_forward_hook(
            lambda m, args, out, a=a, b=b: out + (args[0] @ a.to(out.dtype).T @ b.to(out.dtype).T) * scale
        )
    micro, accum = cfg.batch.resolve(world)
    samplers = [
        MicroBatchSampler.from_config(data.lengths, cfg.data, micro, accum, world_size=world, rank=r)
        for r in range(world)
    ]
    o = cfg.optim
    total = min(o.epochs * (len(samplers[0]) // accum), o.max_steps or math.inf)
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(o.warmup_ratio * total), total)
    model.train()
    losses, out, epoch = [], [], 0
    while len(out) < total:
        for s in samplers:
            s.set_epoch(epoch)
        for micro_step, rows_per_rank in enumerate(zip(*samplers), start=1):
            for rows in rows_per_rank:
                loss = model(**collate([[data[i] for i in row] for row in rows], pad_id)).loss
                (loss / (accum * world)).backward()
                losses.append(loss.item())
            if micro_step % accum:
                continue
            torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            out.append(sum(losses) / len(losses))
            losses = []
            if len(out) == total:
                break
        epoch += 1
    return out

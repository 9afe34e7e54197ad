"""`alpaca-ds train`: supervised fine-tuning with DeepSpeed, read top to bottom: setup -> loop -> save.

    deepspeed --num_gpus 2 --module alpaca_ds.train --config launch/recipes/tiny.yaml
    alpaca-ds train --config launch/recipes/tiny.yaml --num-gpus 2      # builds and runs that command

Relaunching the same command resumes from the last complete checkpoint and continues exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_bytes, atomic_write_json, sha256_file
from alpaca_ds.common.provenance import PROVENANCE, weights_sha256
from alpaca_ds.config import dump_config, load_config
from alpaca_ds.dataset.collate import collate
from alpaca_ds.dataset.sampler import MicroBatchSampler
from alpaca_ds.dataset.shards import TokenizedDataset, check_tokenizer, read_manifest
from alpaca_ds.dataset.tokenizer import add_missing_special_tokens, load_tokenizer, tokenizer_identity
from alpaca_ds.train import checkpoint, export, lora
from alpaca_ds.train.config import TrainConfig
from alpaca_ds.train.ds_config import batch_arithmetic, build_ds_config
from alpaca_ds.train.metrics import MetricsLog, plot_loss_curve
from alpaca_ds.train.model import build_model


def preflight(cfg: TrainConfig, world_size: int, here: bool = True) -> tuple[dict, dict, dict]:
    """Everything that can be wrong before a model loads: returns (ds_config, dataset manifest, tokenizer identity).
    `here`: the ranks run on this machine, so QLoRA's GPU is checked here too."""
    ds_config = build_ds_config(cfg, world_size)
    lora.check_quantization(cfg.model, gpu_here=here)
    manifest = read_manifest(cfg.data.path)
    identity = tokenizer_identity(cfg.model.tokenizer_path)
    check_tokenizer(manifest, Path(cfg.data.path), identity["sha256"])
    run_dir = Path(cfg.output_dir)
    # The recipe is compared as settings, not as text, so that a run started before a setting existed (its
    # default now) resumes; the engine JSON as text.
    for name, same in (
        ("config.resolved.yaml", lambda path: _same_config(path, cfg)),
        ("ds_config.json", lambda path: path.read_text() == _json(ds_config)),
    ):
        if (run_dir / name).is_file() and not same(run_dir / name):
            raise UserError(
                f"{cfg.output_dir}: holds a different run ({name} differs from this one's: another "
                "recipe, override or world size); pick another output_dir, or delete it to start over"
            )
    return ds_config, manifest, identity


def _same_config(path: Path, cfg: TrainConfig) -> bool:
    try:
        return load_config(TrainConfig, path) == cfg
    except UserError:  # a key this version no longer has
        return False


def train(cfg: TrainConfig) -> None:
    # ------------------------------------------------------------------ setup
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    unlink_cpu_allreduce_buffers()
    started = time.time()
    rank, world = dist.get_rank(), dist.get_world_size()
    main = rank == 0
    ds_config, manifest, _ = preflight(cfg, world)
    micro, accum = cfg.batch.resolve(world)
    run_dir, checkpoints = Path(cfg.output_dir), Path(cfg.output_dir) / "checkpoints"
    train_set = TokenizedDataset(cfg.data.path, "train", train_on_prompt=cfg.data.train_on_prompt)
    val_set = (
        TokenizedDataset(cfg.data.path, "validation", train_on_prompt=cfg.data.train_on_prompt)
        if manifest["splits"]["validation"]["examples"]
        else None
    )
    pad_id = manifest["tokenizer"]["pad_token_id"]
    sampler = MicroBatchSampler.from_config(train_set.lengths, cfg.data, micro, accum, world_size=world, rank=rank)
    steps_per_epoch = len(sampler) // accum
    total_steps = min(cfg.optim.epochs * steps_per_epoch, cfg.optim.max_steps or math.inf)
    warmup_steps = math.ceil(cfg.optim.warmup_ratio * total_steps)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.resolved.yaml", dump_config(cfg).encode())
        atomic_write_bytes(run_dir / "ds_config.json", _json(ds_config).encode())
        print(
            f"{batch_arithmetic(cfg, world)}; {len(train_set)} examples, {steps_per_epoch} steps per epoch, "
            f"{total_steps} steps ({warmup_steps} warmup)",
            flush=True,
        )

    model = build_model(cfg.model, ds_config, manifest["tokenizer"]["vocab_size"])
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=lambda opt: get_cosine_schedule_with_warmup(opt, warmup_steps, total_steps),
    )
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    if main:
        tokenizer = load_tokenizer(cfg.model.tokenizer_path)
        add_missing_special_tokens(tokenizer)
        export.write_skeleton(engine.module, tokenizer, run_dir)

    state = checkpoint.load_latest(engine, checkpoints)
    step = state["step"] if state else 0
    if state:
        sampler.load_state_dict(state["sampler"])
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=step) if main else None
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not main, dynamic_ncols=True)
    if main and state:
        print(f"resumed from {checkpoint.tag_for(step)} (epoch {sampler.epoch}, micro-batch {sampler.position})")

    # ------------------------------------------------------------------ loop
    engine.train()
    window = _Window()
    while step < total_steps:
        sampler.set_epoch(sampler.epoch if sampler.position < len(sampler) else sampler.epoch + 1)
        for rows in sampler:
            batch = on_device(collate([[train_set[i] for i in row] for row in rows], pad_id), engine)
            lr = scheduler.get_last_lr()[0]
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            window.add(
                loss.item(), int(batch["input_ids"].numel()), sum(int(train_set.lengths[row].sum()) for row in rows)
            )
            if sampler.position % accum:
                continue  # still accumulating gradients for this optimizer step
            step += 1
            bar.update(1)
            evaluate_now = val_set is not None and (
                step == total_steps or (cfg.log.eval_every_steps and step % cfg.log.eval_every_steps == 0)
            )
            if step % cfg.log.every_steps == 0 or step == total_steps or evaluate_now:
                row = window.summary(step, sampler, steps_per_epoch, lr, engine, n_params, cfg.log.peak_tflops, world)
                if evaluate_now:
                    row["val_loss"] = evaluate(engine, val_set, micro, world, rank, pad_id)
                if main:
                    log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
                _monitor(engine, row)
            if step % cfg.checkpoint.every_steps == 0 or step == total_steps:
                checkpoint.save(
                    engine, checkpoints, step, {"step": step, "sampler": sampler.state_dict()}, cfg.checkpoint.keep_last
                )
            if step == total_steps:
                break
    bar.close()

    # ------------------------------------------------------------------ save
    if main:
        log.close()
        plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")
    diffs, base_sha256 = export_final(engine, cfg, run_dir)
    if main:
        atomic_write_json(
            run_dir / PROVENANCE,
            {
                "dataset": {
                    "path": str(Path(cfg.data.path).resolve()),
                    "manifest_sha256": sha256_file(Path(cfg.data.path) / "manifest.json"),
                },
                "model": {"name_or_path": cfg.model.name_or_path, "init_config": cfg.model.init_config},
                "world_size": world,
                "accelerator": get_accelerator().device_name(),
                "device": get_accelerator().get_device_name()
                if hasattr(get_accelerator(), "get_device_name")
                else None,
                "steps": step,
                "seconds_this_launch": round(time.time() - started, 1),
                "resumed_from_step": state["step"] if state else None,
                "final_weights_sha256": weights_sha256(run_dir / "final"),
                "export_logits_max_diff": max(diffs.values()),
                **(
                    {
                        "lora": {
                            **cfg.model.lora.model_dump(mode="json"),
                            "adapter_sha256": weights_sha256(run_dir / lora.ADAPTER),
                            "base_tensors_sha256": base_sha256,
                        }
                    }
                    if cfg.model.lora
                    else {}
                ),
            },
        )
        folders = {"merged": "final", "adapter": lora.ADAPTER}
        exported = ", ".join(
            f"{run_dir / folders[kind]} (reloaded logits within {diff:.2g} of the engine's)"
            for kind, diff in diffs.items()
        )
        print(f"done: {step} steps; exported {exported}")
    # Leave together: a rank that exits while another still holds the gloo/NCCL group can abort the other's exit.
    dist.barrier()
    dist.destroy_process_group()


def unlink_cpu_allreduce_buffers() -> None:
    """DeepSpeed's CPU all-reduce (every rank on one machine) maps a 66 MiB /dev/shm file per rank and never
    removes it, so each run would leave them behind until /dev/shm fills the RAM. Once every rank has mapped every
    file (init_distributed returned on all ranks), the names can go: the mappings stay valid."""
    if get_accelerator().device_name() != "cpu" or int(os.environ.get("LOCAL_SIZE") or 0) != dist.get_world_size():
        return
    dist.barrier()
    env = os.environ
    Path(
        f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR', '')}_"
        f"{env.get('MASTER_PORT', '')}_{dist.get_rank()}"
    ).unlink(missing_ok=True)


def on_device(batch: dict[str, torch.Tensor], engine) -> dict[str, torch.Tensor]:
    """The collator builds CPU tensors; DeepSpeed's engine does not move its inputs to its device."""
    return {k: v.to(engine.device) for k, v in batch.items()}


def evaluate(engine, dataset: TokenizedDataset, micro: int, world: int, rank: int, pad_id: int) -> float:
    """Mean loss per label token over the split (examples wrapped in to fill the last step count again)."""
    sampler = MicroBatchSampler(dataset.lengths, micro, world_size=world, rank=rank, seed=0)
    total = torch.zeros(2, dtype=torch.float64)
    engine.eval()
    with torch.no_grad():
        for rows in sampler:
            batch = on_device(collate([[dataset[i] for i in row] for row in rows], pad_id), engine)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += torch.tensor([engine(**batch).loss.item() * n, n], dtype=torch.float64)
    engine.train()
    dist.all_reduce(total)
    return float(total[0] / total[1])


def export_final(engine, cfg: TrainConfig, run_dir: Path) -> tuple[dict[str, float], dict | None]:
    """Consolidate the weights into run_dir/final (with LoRA: run_dir/adapter, and final/ merged unless switched
    off) and check each reloaded model's logits against the engine's. Returns {"merged"/"adapter": max diff} and,
    on rank 0 of a LoRA run, the sha256 of each frozen base tensor."""
    lora_cfg = cfg.model.lora
    # a 4-bit base is not gathered: only the adapter is exported (and checked on the base reloaded in 4 bits)
    quantized = lora_cfg is not None and lora_cfg.quantize != "none"
    zero3 = engine.zero_optimization_stage() == 3
    state_dict = (
        engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=quantized)
        if zero3
        else engine.module.state_dict()
    )
    batch = export.fixed_batch(engine.module.config.vocab_size)
    engine.eval()
    with torch.no_grad():
        reference = engine(**on_device(batch, engine)).logits.float().cpu()
    kinds = ["merged"] if lora_cfg is None else ["adapter"] + (["merged"] if lora_cfg.merge else [])
    diff, base_sha256 = torch.zeros(len(kinds)), None
    if dist.get_rank() == 0:
        if cfg.model.lora is None:
            export.write_hf_folder(state_dict, run_dir, run_dir / "final", cfg.export_dtype)
            diffs = {
                "merged": export.check_logits(
                    export.reload_logits(run_dir / "final", batch, cfg.export_dtype), reference, batch["attention_mask"]
                )
            }
        else:
            diffs, base_sha256 = export.export_lora(engine.module, state_dict, run_dir, run_dir, cfg, batch, reference)
        diff[:] = torch.tensor([diffs[k] for k in kinds])
    dist.broadcast(diff, 0)
    return dict(zip(kinds, diff.tolist())), base_sha256


class _Window:
    """Losses and token counts of the micro-batches since the last logged step."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.losses, self.tokens, self.real_tokens, self.start = [], 0, 0, time.time()

    def add(self, loss: float, tokens: int, real_tokens: int):
        self.losses.append(loss)
        self.tokens += tokens
        self.real_tokens += real_tokens

    def summary(self, step, sampler, steps_per_epoch, lr, engine, n_params, peak_tflops, world) -> dict:
        sums = torch.tensor([sum(self.losses), len(self.losses), self.tokens, self.real_tokens], dtype=torch.float64)
        dist.all_reduce(sums)
        seconds = time.time() - self.start
        real_per_s = float(sums[3]) / seconds
        grad_norm = engine.get_global_grad_norm()
        row = {
            "step": step,
            "epoch": round(sampler.epoch + sampler.position / len(sampler), 4),
            "loss": float(sums[0] / sums[1]),
            "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "tokens": int(sums[2]),
            "real_tokens": int(sums[3]),
            "tokens_per_s": round(real_per_s, 1),
            "mfu": round(6 * n_params * real_per_s / (peak_tflops * 1e12 * world), 6),
            "memory_mb": _memory_mb(),
            "seconds": round(seconds, 3),
        }
        self.reset()
        return row


def _memory_mb() -> float:
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return round(accelerator.max_memory_allocated() / 2**20, 1)


def _monitor(engine, row: dict) -> None:
    if engine.monitor.enabled:
        engine.monitor.write_events(
            [
                (f"Train/{k}", v, row["step"])
                for k, v in row.items()
                if k in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss") and v is not None
            ]
        )


def _json(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m alpaca_ds.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="recipe YAML (launch/recipes/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # from the deepspeed launcher
    args = parser.parse_args(argv)
    try:
        train(load_config(TrainConfig, args.config, args.overrides))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)

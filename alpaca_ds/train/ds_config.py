"""The DeepSpeed config of a run: the engine YAML (ds_configs/) plus what the recipe and world size decide.

    alpaca-ds config render launch/recipes/alpaca_7b.yaml --world-size 8

DeepSpeed's "auto" values are filled in only by the HF Trainer, so alpaca-ds resolves every value itself.
"""

from __future__ import annotations

from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import read_yaml_mapping
from alpaca_ds.train.config import TrainConfig

# Keys the recipe decides; an engine YAML that sets them would silently disagree with the recipe.
INJECTED = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "optimizer",
    "scheduler",
    "gradient_clipping",
    "tensorboard",
    "csv_monitor",
    "wandb",
)


def load_engine_yaml(path: str) -> dict:
    engine = read_yaml_mapping(path, "the DeepSpeed config (ds_config)")
    clash = [k for k in INJECTED if k in engine]
    if clash:
        raise UserError(
            f"ds_config {path}: {', '.join(clash)} {'is' if len(clash) == 1 else 'are'} set from the "
            "recipe (batch.*, optim.*, log.*); remove from the engine YAML"
        )
    return engine


def build_ds_config(cfg: TrainConfig, world_size: int) -> dict:
    """The complete DeepSpeed JSON for `cfg` on `world_size` GPUs (batch invariant checked)."""
    micro, accum = cfg.batch.resolve(world_size)
    ds = load_engine_yaml(cfg.ds_config)
    ds.update(
        {
            "train_batch_size": cfg.batch.global_batch_size,
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": accum,
            "gradient_clipping": cfg.optim.grad_clip,
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": cfg.optim.lr,
                    "betas": list(cfg.optim.betas),
                    "eps": cfg.optim.eps,
                    "weight_decay": cfg.optim.weight_decay,
                    # torch's AdamW on the CPU accelerator; DeepSpeed's fused kernel on GPUs
                    "torch_adam": not _has_gpu(),
                },
            },
        }
    )
    monitor_dir = str(Path(cfg.output_dir) / "monitor")
    for key, on in (("tensorboard", cfg.log.tensorboard), ("csv_monitor", cfg.log.csv)):
        if on:
            ds[key] = {"enabled": True, "output_path": monitor_dir, "job_name": "alpaca-ds"}
    if cfg.log.wandb:
        ds["wandb"] = {"enabled": True, "project": "alpaca-ds"}
    _validate(ds, cfg.ds_config, world_size)
    return ds


def batch_arithmetic(cfg: TrainConfig, world_size: int) -> str:
    micro, accum = cfg.batch.resolve(world_size)
    return (
        f"global batch {cfg.batch.global_batch_size} = micro-batch {micro} x accumulation {accum} x world {world_size}"
    )


def _validate(ds: dict, path: str, world_size: int) -> None:
    """DeepSpeed's own schema check (typos in zero_optimization keys, wrong types), before any launch."""
    import torch.distributed as dist
    from deepspeed.runtime.config import DeepSpeedConfig
    from pydantic import ValidationError

    # DeepSpeedConfig checks the batch arithmetic against this process's world: the run's inside a launched
    # rank, a single process when rendering or checking before the launch.
    checked = ds if dist.is_initialized() else {**ds, "train_batch_size": ds["train_batch_size"] // world_size}
    try:
        DeepSpeedConfig(checked)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise UserError(f"ds_config {path}: DeepSpeed rejects it: {problems}") from None


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()

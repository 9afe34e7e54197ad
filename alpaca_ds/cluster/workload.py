"""The workload `alpaca-ds plan` times: the training split's example lengths (the built dataset's manifest, else
Alpaca's distribution) and the steps, tokens and FLOPs of the sampler's own batches for the run's world size.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from alpaca_ds.cluster import alpaca_lengths
from alpaca_ds.cluster.arch import Arch
from alpaca_ds.common.errors import UserError
from alpaca_ds.train.config import TrainConfig


def dataset_lengths(cfg: TrainConfig, dataset: str | None) -> tuple[np.ndarray, str, dict | None]:
    """Example lengths of the training split, the manifest when a dataset is built, else Alpaca's distribution."""
    from alpaca_ds.dataset.shards import TokenizedDataset

    folder = Path(dataset or cfg.data.path)
    if (folder / "manifest.json").is_file():
        ds = TokenizedDataset(folder, "train")
        return np.asarray(ds.lengths, dtype=np.int64), f"{folder} (manifest)", ds.manifest
    if dataset is not None:
        raise UserError(f"--dataset {dataset}: no manifest.json (not a built dataset)")
    lengths = np.repeat(
        np.arange(alpaca_lengths.SHORTEST, alpaca_lengths.SHORTEST + len(alpaca_lengths.COUNTS)), alpaca_lengths.COUNTS
    )
    return lengths, f"{folder} not built: assuming {alpaca_lengths.SOURCE}", None


def workload(cfg: TrainConfig, lengths: np.ndarray, world: int, micro: int, accum: int, arch: Arch) -> dict:
    """Steps, tokens and FLOPs of the run, from the sampler's own batches for this world size (epoch 0)."""
    from alpaca_ds.dataset.sampler import MicroBatchSampler

    # One rank of micro x world rows per micro-step and accumulation `accum` draws the same global rows as
    # `world` ranks of `micro`: rank r's micro-batch is rows [r*micro, (r+1)*micro) of each.
    sampler = MicroBatchSampler.from_config(lengths, cfg.data, micro * world, accum, world_size=1, rank=0)
    d = arch.dims
    real = slots = flops = 0.0
    longest = 0
    for step_rows in sampler.epoch_batches(0):
        row_lengths = np.array([int(lengths[row].sum()) for row in step_rows]).reshape(world, micro)
        padded = row_lengths.max(axis=1)  # each rank pads its micro-batch to its longest row
        real += row_lengths.sum()
        slots += float((padded * micro).sum())
        flops += float((padded * micro * (6 * arch.matmul_params + 12 * d.layers * d.hidden * padded)).sum())
        longest = max(longest, int(padded.max()))
    steps_per_epoch = len(sampler.epoch_batches(0)) // accum
    total_steps = min(cfg.optim.epochs * steps_per_epoch, cfg.optim.max_steps or math.inf)
    scale = total_steps / steps_per_epoch
    if cfg.model.gradient_checkpointing:
        flops *= 4 / 3  # the forward runs twice
    if cfg.model.lora is not None:
        flops *= 2 / 3  # frozen weights need no weight gradients: forward 2N + input gradients 2N of 6N
    return {
        "examples": int(len(lengths)),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": int(total_steps),
        "epochs": round(scale, 4),
        "real_tokens": int(real * scale),
        "computed_tokens": int(slots * scale),
        "padding_efficiency": round(real / slots, 4),
        "longest_row": longest,
        "flops": flops * scale,
    }

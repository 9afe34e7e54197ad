"""Checkpoints that resume exactly: DeepSpeed's engine state plus the sampler position and every RNG.

<output_dir>/checkpoints/step-00000040/...   DeepSpeed's files, plus rng-rank<r>.pt per rank
<output_dir>/checkpoints/latest              the newest complete tag, written only after every rank is done
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from alpaca_ds.common.io import atomic_write_bytes

LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def latest_tag(checkpoints: Path) -> str | None:
    path = checkpoints / LATEST
    return path.read_text().strip() if path.is_file() else None


def save(engine, checkpoints: Path, step: int, client_state: dict, keep_last: int) -> None:
    """Save on every rank; `latest` moves to this tag only once all ranks have finished writing it."""
    tag = tag_for(step)
    # A frozen base (LoRA) is not saved: it is the model loaded at start, and a checkpoint of a 7B base + adapter
    # would be 13 GB instead of a few MB. Full fine-tuning has no frozen parameter, so this changes nothing there.
    engine.save_checkpoint(
        str(checkpoints), tag=tag, client_state=client_state, save_latest=False, exclude_frozen_parameters=True
    )
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(rng, checkpoints / tag / f"rng-rank{dist.get_rank()}.pt")
    dist.barrier()
    if dist.get_rank() == 0:
        atomic_write_bytes(checkpoints / LATEST, tag.encode())
        tags = sorted(p.name for p in checkpoints.glob("step-*") if p.is_dir())
        for old in tags[:-keep_last]:
            shutil.rmtree(checkpoints / old, ignore_errors=True)
    dist.barrier()


def _frozen(engine) -> bool:
    return any(not p.requires_grad for p in engine.module.parameters())


def load_latest(engine, checkpoints: Path) -> dict | None:
    """Restore the newest complete checkpoint into `engine` and this rank's RNGs; returns its client state."""
    tag = latest_tag(checkpoints)
    if tag is None:
        return None
    _, client_state = engine.load_checkpoint(
        str(checkpoints),
        tag=tag,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
        load_module_strict=not _frozen(engine),
    )
    rng = torch.load(checkpoints / tag / f"rng-rank{dist.get_rank()}.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return client_state

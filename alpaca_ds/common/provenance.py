"""The chain from a released model back to the data it came from: generation -> dataset -> training -> evaluation.

Each stage records what it consumed by content hash, so `alpaca-ds release card` can walk the chain and a reader
can check every link. This module only reads the files the stages write; it imports none of them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from alpaca_ds.common.io import sha256_file

PROVENANCE = "provenance.json"


def weights_sha256(folder: str | Path) -> str | None:
    """A model folder's identity: the hash of its safetensors files (None for an endpoint or a folder without)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    return hashlib.sha256("".join(f"{f.name}\0{sha256_file(f)}\n" for f in files).encode()).hexdigest()


def tensor_sha256(t) -> str:
    """One tensor's identity: dtype, shape and bytes (torch imported here only: generate and evaluate read this
    module without it)."""
    import torch

    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def generation_summary(regen: Path) -> dict | None:
    """What a dataset's input owes to `alpaca-ds generate`, when it is a generation run's regen.json."""
    out = regen.parent
    files = {name: out / name for name in ("run.json", "cost.json", "stats.json")}
    if regen.name != "regen.json" or not all(p.is_file() for p in files.values()):
        return None
    run, cost, stats = (json.loads(p.read_text()) for p in files.values())
    fp = run["fingerprint"]
    return {
        "out_dir": str(out.resolve()),
        "teacher_model": fp["api"]["model"],
        "api_mode": fp["api"]["mode"],
        "prompt_template_sha256": fp["prompt_template_sha256"],
        "seed_tasks_sha256": fp["seed_tasks_sha256"],
        "seed_tasks": run.get("config", {}).get("seed_tasks"),
        "rouge_threshold": fp["rouge_threshold"],
        "accepted": stats["accepted"],
        "target": stats["target"],
        "requests": stats["requests"],
        "rejected": stats["candidates"]["rejected"],
        "spent_usd": cost["spent_usd"],
        "prompt_tokens": cost["prompt_tokens"],
        "completion_tokens": cost["completion_tokens"],
        "files_sha256": {name: sha256_file(p) for name, p in files.items()},
    }

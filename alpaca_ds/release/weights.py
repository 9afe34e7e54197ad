"""Weight diffs: publish tuned − base when the base model's licence forbids publishing the weights.

    alpaca-ds release diff --base BASE --tuned runs/alpaca-7b/final --out release/weight-diff
    alpaca-ds release recover --base BASE --diff release/weight-diff --out alpaca-7b

Both work one tensor at a time (a 7B model never needs two full copies in memory). The diff holds tuned − base in
float32 (float64 for the rare tensor where float32 would not give the tuned bits back), the rows of tokens added
to the vocabulary as they are, the tuned model's config and tokenizer files, and a sha256 of every tuned tensor:
`recover` refuses the result, naming the first tensor that differs, unless it is the tuned model bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_json
from alpaca_ds.common.provenance import tensor_sha256
from alpaca_ds.release.result import WeightsResult

DIFF_INDEX = "weight_diff.json"
SHARD_BYTES = 2 * 2**30  # diff shards of at most 2 GiB: one is the most held in memory at once
COPIED = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
)


class Weights:
    """The tensors of an HF folder (one or several safetensors files), read one at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            self.where = json.loads(index.read_text())["weight_map"]
        elif (self.folder / "model.safetensors").is_file():
            with safe_open(self.folder / "model.safetensors", "pt") as f:
                self.where = {k: "model.safetensors" for k in f.keys()}
        else:
            raise UserError(
                f"{self.folder}: no model.safetensors or model.safetensors.index.json (an HF model "
                "folder saved with safetensors is needed)"
            )

    def names(self) -> list[str]:
        return sorted(self.where)

    def get(self, name: str) -> torch.Tensor:
        with safe_open(self.folder / self.where[name], "pt") as f:
            return f.get_tensor(name)


def make_diff(base: Path, tuned: Path, out: Path | str, shard_bytes: int = SHARD_BYTES) -> WeightsResult:
    """Write tuned − base to `out`; the result holds its index (per-tensor checksums, shapes, dtypes)."""
    base_w, tuned_w = Weights(base), Weights(tuned)
    missing = [n for n in tuned_w.names() if n not in base_w.where]
    if missing:
        raise UserError(
            f"{base}: has no tensor {missing[0]!r} of the tuned model ({len(missing)} missing); "
            "is it the model the tuned one was trained from?"
        )
    index = {"format": "alpaca-ds/weight-diff/v1", "tensors": {}, "shards": []}
    with _staged(out) as stage:
        for shard_name, tensors in _shards(_diffs(base_w, tuned_w, index), "diff", shard_bytes):
            save_file(tensors, stage / shard_name)
            index["shards"].append(shard_name)
        index["sha256"] = _combined(index)
        _copy_files(tuned, stage)
        atomic_write_json(stage / DIFF_INDEX, index)
    return WeightsResult(str(out), index)


def recover(base: Path, diff: Path, out: Path | str, shard_bytes: int = SHARD_BYTES) -> WeightsResult:
    """Rebuild the tuned model from `base` + `diff` into `out`, refusing unless every tensor's sha256 matches."""
    index_path = Path(diff) / DIFF_INDEX
    if not index_path.is_file():
        raise UserError(f"{diff}: no {DIFF_INDEX}; not a complete weight diff (run `alpaca-ds release diff` again)")
    index = json.loads(index_path.read_text())
    base_w = Weights(base)
    diff_files = {}
    for shard in index["shards"]:
        with safe_open(Path(diff) / shard, "pt") as f:
            diff_files.update({k: shard for k in f.keys()})

    def recovered() -> Iterator[tuple[str, torch.Tensor]]:
        for name in tqdm(sorted(index["tensors"]), desc="recover", unit="tensor"):
            meta = index["tensors"][name]
            with safe_open(Path(diff) / diff_files[name], "pt") as f:
                delta = f.get_tensor(name)
            if name not in base_w.where:
                raise UserError(f"{base}: has no tensor {name!r}; wrong base model")
            old = base_w.get(name)
            if list(old.shape[1:]) != meta["shape"][1:] or old.shape[0] > meta["shape"][0]:
                raise UserError(
                    f"{base}: tensor {name!r} has shape {list(old.shape)}, the diff expects "
                    f"{meta['shape']}; wrong base model"
                )
            tensor = _padded(old, meta["shape"]).to(delta.dtype)
            tensor += delta  # in place: temporaries of the largest tensor dominate the peak memory
            del old, delta
            tensor = tensor.to(getattr(torch, meta["dtype"]))
            if tensor_sha256(tensor) != meta["sha256"]:
                raise UserError(
                    f"{base}: recovered tensor {name!r} does not match the tuned model's checksum; "
                    "this is not the base model the diff was made from (first mismatching tensor)"
                )
            yield name, tensor

    with _staged(out) as stage:
        written = []
        for shard_name, tensors in _shards(recovered(), "model", shard_bytes):
            save_file(tensors, stage / shard_name, metadata={"format": "pt"})
            written.append((shard_name, list(tensors)))
        _write_model_index(stage, written)
        _copy_files(Path(diff), stage)
    return WeightsResult(str(out), index, recovered=True)


def _diffs(base_w: Weights, tuned_w: Weights, index: dict) -> Iterator[tuple[str, torch.Tensor]]:
    for name in tqdm(tuned_w.names(), desc="diff", unit="tensor"):
        new, old = tuned_w.get(name), base_w.get(name)
        if list(old.shape[1:]) != list(new.shape[1:]) or old.shape[0] > new.shape[0]:
            raise UserError(
                f"tensor {name!r}: base shape {list(old.shape)} cannot grow into tuned "
                f"{list(new.shape)}; is this the base model the tuned one was trained from?"
            )
        added_rows = new.shape[0] - old.shape[0] if new.dim() else 0
        old = _padded(old, list(new.shape))  # rows of added tokens: the diff holds them as they are
        delta = new.float() - old.float()
        if not torch.equal((old.float() + delta).to(new.dtype), new):
            delta = new.double() - old.double()
        index["tensors"][name] = {
            "shape": list(new.shape),
            "dtype": str(new.dtype).removeprefix("torch."),
            "sha256": tensor_sha256(new),
            "added_rows": int(added_rows),
        }
        yield name, delta


def _padded(t: torch.Tensor, shape: list[int]) -> torch.Tensor:
    if list(t.shape) == shape:
        return t
    out = torch.zeros(shape, dtype=t.dtype)
    out[: t.shape[0]] = t
    return out


@contextmanager
def _staged(out: Path):
    """Write into a sibling folder and rename it to `out` only when complete; an existing `out` is never touched."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty; choose another --out (nothing was written)")
    stage = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(stage, out)


def _copy_files(src: Path, dst: Path) -> None:
    for name in COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _shards(tensors: Iterator[tuple[str, torch.Tensor]], prefix: str, shard_bytes: int) -> Iterator[tuple[str, dict]]:
    """Group a stream of tensors into files of at most `shard_bytes` (a larger tensor gets a file of its own)."""
    current: dict[str, torch.Tensor] = {}
    size, k = 0, 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > shard_bytes:
            yield f"{prefix}-{k:05d}.safetensors", current
            current, size, k = {}, 0, k + 1
        current[name] = t.contiguous()
        size += nbytes
    if current:
        yield f"{prefix}-{k:05d}.safetensors", current


def _write_model_index(out: Path, written: list[tuple[str, list[str]]]) -> None:
    if len(written) == 1:
        (out / written[0][0]).rename(out / "model.safetensors")
        return
    weight_map = {name: shard for shard, names in written for name in names}
    total = sum((out / shard).stat().st_size for shard, _ in written)
    atomic_write_json(
        out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )


def _combined(index: dict) -> str:
    return hashlib.sha256(
        "".join(f"{n}\0{m['sha256']}\n" for n, m in sorted(index["tensors"].items())).encode()
    ).hexdigest()

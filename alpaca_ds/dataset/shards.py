"""The tokenized dataset on disk: memory-mapped shards under a manifest that is written last.

Layout of a dataset directory:

    manifest.json                      present only when the build finished; names everything below
    build-<id>/<split>-<k>.ids.npy     token ids of the shard's examples, end to end (uint16 or int32)
    build-<id>/<split>-<k>.mask.npy    uint8 per token: 1 where the token is a label, 0 where it is IGNORE_INDEX
    build-<id>/<split>-<k>.offsets.npy int64, examples + 1: example i is ids[offsets[i]:offsets[i + 1]]
    build-<id>/<split>-<k>.records.npy int64 per example: its record index in the input file

A rebuild writes a new build-<id> folder and replaces the manifest atomically, so a killed rebuild leaves the
previous dataset readable, and a killed first build leaves no manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import sha256_file
from alpaca_ds.dataset.template import IGNORE_INDEX

FORMAT = "alpaca-ds/tokenized/v1"
MANIFEST = "manifest.json"
FILES = ("ids", "mask", "offsets", "records")


class ShardWriter:
    """Accumulates one split's examples and writes a shard each `shard_size` examples."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_size: int):
        self.folder, self.split, self.dtype, self.shard_size = folder, split, dtype, shard_size
        self.shards: list[dict] = []
        self.examples = self.tokens = self.label_tokens = 0
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending = 0

    def add(self, ids: np.ndarray, lengths: np.ndarray, masked: np.ndarray, records: np.ndarray) -> None:
        """Append examples given end to end (`lengths` each, the first `masked` tokens of each not labels)."""
        starts = np.concatenate([[0], np.cumsum(lengths)])
        while len(lengths):
            take = min(self.shard_size - self._pending, len(lengths))
            end = starts[take] - starts[0]
            # Held in the shard's own dtypes (2 + 1 bytes a token for LLaMA), so a full shard costs little memory.
            position = np.arange(end) - np.repeat(starts[:take] - starts[0], lengths[:take])
            mask = (position >= np.repeat(masked[:take], lengths[:take])).astype(np.uint8)
            self._parts.append((ids[:end].astype(self.dtype), mask, lengths[:take], records[:take]))
            self._pending += take
            ids, lengths, masked, records, starts = (
                ids[end:],
                lengths[take:],
                masked[take:],
                records[take:],
                starts[take:],
            )
            if self._pending == self.shard_size:
                self._flush()

    def close(self) -> dict:
        if self._pending:
            self._flush()
        return {
            "examples": self.examples,
            "tokens": self.tokens,
            "label_tokens": self.label_tokens,
            "shards": self.shards,
        }

    def _flush(self) -> None:
        ids, mask, lengths, records = (np.concatenate(p) for p in zip(*self._parts))
        self._parts, self._pending = [], 0
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arrays = {"ids": ids, "mask": mask, "offsets": offsets, "records": records.astype(np.int64)}
        shard = {"examples": int(len(lengths)), "tokens": int(len(ids)), "files": {}}
        for name in FILES:
            path = self.folder / f"{self.split}-{len(self.shards):05d}.{name}.npy"
            with open(path, "wb") as f:
                np.save(f, arrays[name])
            shard["files"][name] = {
                "path": path.relative_to(self.folder.parent).as_posix(),
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
            }
        self.shards.append(shard)
        self.examples += shard["examples"]
        self.tokens += shard["tokens"]
        self.label_tokens += int(arrays["mask"].sum())


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        why = "the build did not finish" if folder.is_dir() else "the directory does not exist"
        raise UserError(
            f"{folder}: no {MANIFEST} ({why}); build it with "
            f"`alpaca-ds data build --config CONFIG --set output={folder}`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable manifest ({e}); rebuild the dataset") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}; rebuild the dataset")
    return manifest


class TokenizedDataset:
    """One split of a built dataset; item i is {"input_ids", "labels"} as int64 arrays, labels -100 on the prompt
    (unless train_on_prompt)."""

    def __init__(
        self,
        folder: str | Path,
        split: str = "train",
        tokenizer_sha256: str | None = None,
        train_on_prompt: bool = False,
    ):
        self.folder = Path(folder)
        self.train_on_prompt = train_on_prompt  # labels on the prompt tokens too (alpaca-lora's default)
        self.manifest = read_manifest(self.folder)
        if tokenizer_sha256 is not None:
            check_tokenizer(self.manifest, self.folder, tokenizer_sha256)
        if split not in self.manifest["splits"]:
            raise UserError(f"{self.folder}: no split {split!r}; it has {', '.join(self.manifest['splits'])}")
        self.split = split
        self._shards = []
        for shard in self.manifest["splits"][split]["shards"]:
            files = {}
            for name, meta in shard["files"].items():
                path = self.folder / meta["path"]
                if not path.is_file() or path.stat().st_size != meta["bytes"]:
                    raise UserError(
                        f"{path}: missing or of the wrong size ({meta['bytes']} bytes expected); "
                        "the dataset is damaged, rebuild it"
                    )
                files[name] = np.load(path, mmap_mode="r")
            self._shards.append(files)
        counts = [len(s["offsets"]) - 1 for s in self._shards]
        self._first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.lengths = (
            np.concatenate([np.diff(s["offsets"]) for s in self._shards])
            if self._shards
            else np.zeros(0, dtype=np.int64)
        )

    def __len__(self) -> int:
        return int(self._first[-1])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self._first, i, side="right")) - 1
        shard, j = self._shards[k], i - self._first[k]
        start, end = shard["offsets"][j], shard["offsets"][j + 1]
        ids = np.asarray(shard["ids"][start:end], dtype=np.int64)
        labels = ids.copy() if self.train_on_prompt else np.where(shard["mask"][start:end] == 1, ids, IGNORE_INDEX)
        return {"input_ids": ids, "labels": labels}

    def record_index(self, i: int) -> int:
        """Index of example i's record in the input file."""
        k = int(np.searchsorted(self._first, i, side="right")) - 1
        return int(self._shards[k]["records"][i - self._first[k]])

    def verify(self) -> None:
        """Recompute every shard file's sha256 against the manifest."""
        for shard in self.manifest["splits"][self.split]["shards"]:
            for meta in shard["files"].values():
                if sha256_file(self.folder / meta["path"]) != meta["sha256"]:
                    raise UserError(f"{self.folder / meta['path']}: checksum differs from the manifest; rebuild")


def check_tokenizer(manifest: dict, folder: Path, tokenizer_sha256: str) -> None:
    built = manifest["tokenizer"]
    if built["sha256"] != tokenizer_sha256:
        raise UserError(
            f"{folder}: built with tokenizer {built['name_or_path']!r} (sha256 {built['sha256'][:12]}), "
            f"but this run uses one with sha256 {tokenizer_sha256[:12]}; rebuild the dataset with "
            "the model's tokenizer or train the model it was built for"
        )

"""Turning a micro-batch of rows (see sampler.py) into model inputs.

Rows of one example are padded to the longest in the micro-batch, as Alpaca's DataCollatorForSupervisedDataset
does. Rows of several examples (packing) are laid end to end with position ids restarting at each example and a
4D additive block-causal attention mask, so no token attends across an example boundary and each example's
logits, hence its loss, equal those it gets alone. (transformers' sdpa and eager attention take the 4D mask;
flash-attention reads the boundaries from the position ids.)
"""

from __future__ import annotations

import numpy as np
import torch

from alpaca_ds.dataset.template import IGNORE_INDEX


def collate(rows: list[list[dict[str, np.ndarray]]], pad_id: int, dtype: torch.dtype = torch.float32) -> dict:
    """rows of examples ({"input_ids", "labels"}) -> model inputs; packed when any row holds several examples."""
    if all(len(row) == 1 for row in rows):
        return _pad([row[0] for row in rows], pad_id)
    return _pack(rows, pad_id, dtype)


def _pad(examples: list[dict[str, np.ndarray]], pad_id: int) -> dict:
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[b, :n] = torch.from_numpy(e["input_ids"])
        labels[b, :n] = torch.from_numpy(e["labels"])
    attention_mask = torch.arange(width)[None, :] < torch.tensor([len(e["input_ids"]) for e in examples])[:, None]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask.long()}


def _pack(rows: list[list[dict[str, np.ndarray]]], pad_id: int, dtype: torch.dtype) -> dict:
    width = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # example number within the row; -1 = padding
    for b, row in enumerate(rows):
        start = 0
        for k, e in enumerate(row):
            n = len(e["input_ids"])
            input_ids[b, start : start + n] = torch.from_numpy(e["input_ids"])
            labels[b, start : start + n] = torch.from_numpy(e["labels"])
            # The first token of an example is never predicted, as when it stands alone.
            labels[b, start] = IGNORE_INDEX
            position_ids[b, start : start + n] = torch.arange(n)
            segment[b, start : start + n] = k
            start += n
        segment[b, start:] = torch.arange(len(row), len(row) + width - start)  # padding attends to itself only
    same = segment[:, :, None] == segment[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "attention_mask": mask[:, None]}

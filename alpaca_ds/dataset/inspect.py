"""`alpaca-ds data inspect DIR`: what a built dataset holds and how well each batching mode uses the GPU.

alpaca-ds data inspect out/sample-tokenized --micro-batch 4
alpaca-ds data inspect out/sample-tokenized --jsonl > examples.jsonl
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from alpaca_ds.dataset.sampler import MicroBatchSampler
from alpaca_ds.dataset.shards import TokenizedDataset

HISTOGRAM_BINS = 16


def padding_efficiency(
    lengths: np.ndarray, micro_batch_size: int, mode: str, pack_length: int | None = None, seed: int = 0
) -> float:
    """Real tokens / token slots computed over one epoch, each micro-batch padded to its longest row."""
    sampler = MicroBatchSampler(lengths, micro_batch_size, seed=seed, mode=mode, pack_length=pack_length)
    real = slots = 0
    for batch in sampler.epoch_batches(0):
        row_lengths = [int(lengths[row].sum()) for row in batch]
        real += sum(row_lengths)
        slots += len(row_lengths) * max(row_lengths)
    return real / slots


def report(folder: str, split: str = "train", micro_batch_size: int = 4) -> str:
    ds = TokenizedDataset(folder, split)
    ds.verify()
    m = ds.manifest
    lengths = ds.lengths
    tok = m["tokenizer"]
    lines = [
        f"{folder} ({split}): {len(ds)} examples, {int(lengths.sum())} tokens, "
        f"{m['splits'][split]['label_tokens']} label tokens; shards verified against the manifest",
        f"tokenizer {tok['name_or_path']} (sha256 {tok['sha256'][:12]}, vocab {tok['vocab_size']}, "
        f"added {tok['added_special_tokens'] or 'nothing'}); template {m['template']['name']}; "
        f"max_length {m['max_length']} ({m['overlength']})",
        "counts: " + ", ".join(f"{k} {v}" for k, v in m["counts"].items()),
    ]
    if len(ds) == 0:
        return "\n".join(lines)
    q = np.percentile(lengths, [50, 90, 99])
    lines += [
        f"length: min {lengths.min()}, mean {lengths.mean():.1f}, median {q[0]:.0f}, p90 {q[1]:.0f}, "
        f"p99 {q[2]:.0f}, max {lengths.max()}",
        "",
        "length histogram:",
    ]
    counts, edges = np.histogram(lengths, bins=HISTOGRAM_BINS)
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        lines.append(f"  {lo:6.0f}-{hi:<6.0f} {c:7d} {'#' * int(round(40 * c / counts.max()))}")
    lines += ["", f"padding efficiency (real tokens / slots computed), micro-batch {micro_batch_size}:"]
    modes = [
        ("random order, pad to longest (Alpaca)", "random", None),
        ("length-grouped, pad to longest", "length_grouped", None),
    ]
    modes += [(f"packed to {n}", "packed", n) for n in (512, 2048) if n >= lengths.max()]
    for label, mode, pack in modes:
        lines.append(f"  {label:40s} {100 * padding_efficiency(lengths, micro_batch_size, mode, pack):6.2f}%")
    return "\n".join(lines)


def example_lines(folder: str, split: str = "train") -> Iterator[str]:
    ds = TokenizedDataset(folder, split)
    for i in range(len(ds)):
        e = ds[i]
        yield json.dumps({"index": i, "input_ids": e["input_ids"].tolist(), "labels": e["labels"].tolist()})

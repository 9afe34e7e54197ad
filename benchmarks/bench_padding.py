"""Padding efficiency (real tokens / token slots computed) of each batching mode on the real 52K Alpaca data
tokenized with the LLaMA tokenizer, against Alpaca's random-order pad-to-longest batches.

    /work/venv/bin/python benchmarks/bench_padding.py                       # builds the dataset into a temp dir
    /work/venv/bin/python benchmarks/bench_padding.py --dataset out/alpaca-tokenized --micro-batch 4 --seeds 3

Each mode's efficiency comes from `alpaca_ds.dataset.inspect.padding_efficiency` over one epoch (every
micro-batch padded to its longest row), averaged over --seeds epoch seeds. Modes: random order with
micro-batch 4 (Alpaca: per_device_train_batch_size 4 on 8 GPUs, random sampler), length-grouped, and packing
rows to 512 and to 2048 tokens (micro-batch 4 rows). Without --dataset the script needs ../shared/data, and
without it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ALPACA, LLAMA, missing_alpaca_data

GOAL_PACKED_512 = 0.98


def build(output: Path) -> None:
    from alpaca_ds.config import load_config
    from alpaca_ds.dataset.build import run
    from alpaca_ds.dataset.config import DataBuildConfig

    # Alpaca's settings: every record in train, none held out.
    cfg = load_config(
        DataBuildConfig,
        None,
        [
            f"input={ALPACA}",
            f"tokenizer={LLAMA}",
            f"output={output}",
            "max_length=512",
            "overlength=truncate",
            "val_fraction=0.0",
        ],
    )
    run(cfg)


def measure(folder: Path, micro: int, seeds: int) -> int:
    from alpaca_ds.dataset.inspect import padding_efficiency
    from alpaca_ds.dataset.shards import TokenizedDataset

    ds = TokenizedDataset(folder, "train")
    lengths = ds.lengths
    tok = ds.manifest["tokenizer"]
    q = np.percentile(lengths, [50, 90, 99])
    print(
        f"bench_padding: {folder} (train): {len(lengths)} examples, {int(lengths.sum())} tokens, tokenizer "
        f"{Path(tok['name_or_path']).name} (vocab {tok['vocab_size']}), max_length {ds.manifest['max_length']}"
    )
    print(
        f"lengths: mean {lengths.mean():.1f}, median {q[0]:.0f}, p90 {q[1]:.0f}, p99 {q[2]:.0f}, "
        f"max {lengths.max()}; micro-batch {micro}; mean of {seeds} epoch seed(s)",
        flush=True,
    )

    modes = [
        ("random order, pad to longest (Alpaca)", "random", None),
        ("length-grouped, pad to longest", "length_grouped", None),
        ("packed to 512", "packed", 512),
        ("packed to 2048", "packed", 2048),
    ]
    results = []
    for label, mode, pack in modes:
        if pack is not None and pack < lengths.max():
            print(f"  {label}: skipped, the longest example has {lengths.max()} tokens")
            continue
        effs, seconds = [], []
        for seed in range(seeds):
            t = time.perf_counter()
            effs.append(padding_efficiency(lengths, micro, mode, pack, seed=seed))
            seconds.append(time.perf_counter() - t)
        results.append((label, mode, pack, effs, float(np.mean(seconds))))

    alpaca = float(np.mean(results[0][3]))
    print()
    header = (
        f"{'batching (micro-batch ' + str(micro) + ')':40s} {'efficiency':>10s} {'min..max':>15s} "
        f"{'x Alpaca':>9s} {'plan s/epoch':>12s}"
    )
    print(header)
    print("-" * len(header))
    for label, _mode, _pack, effs, secs in results:
        mean = float(np.mean(effs))
        spread = f"{100 * min(effs):.2f}..{100 * max(effs):.2f}"
        print(f"{label:40s} {100 * mean:9.2f}% {spread:>15s} {mean / alpaca:8.2f}x {secs:12.2f}")
    print()
    print(
        "efficiency = real tokens / (rows x longest row) summed over an epoch's micro-batches; x Alpaca = how many "
        "times fewer token slots\nthe mode computes per real token than Alpaca's random order; plan s/epoch = time "
        "to plan one epoch's micro-batches (padding_efficiency call)."
    )
    packed512 = [float(np.mean(e)) for label, mode, pack, e, _ in results if pack == 512]
    if packed512:
        ok = packed512[0] >= GOAL_PACKED_512
        print(
            f"goal: packed to 512 >= {100 * GOAL_PACKED_512:.0f}%: {100 * packed512[0]:.2f}% "
            f"{'MET' if ok else 'NOT MET'}"
        )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, help="an existing built dataset directory (default: build one)")
    ap.add_argument("--micro-batch", type=int, default=4, help="rows per micro-batch (Alpaca: 4)")
    ap.add_argument("--seeds", type=int, default=3, help="epoch seeds to average over")
    args = ap.parse_args()
    if args.dataset is not None:
        return measure(args.dataset, args.micro_batch, args.seeds)
    if missing_alpaca_data("bench_padding", " (or pass --dataset DIR of a built dataset)"):
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_padding-") as td:
        build(Path(td) / "alpaca-tokenized")
        return measure(Path(td) / "alpaca-tokenized", args.micro_batch, args.seeds)


if __name__ == "__main__":
    sys.exit(main())

"""Answer throughput of `evaluate answer` on a local model: batched, length-sorted generation against one prompt at
a time (how Alpaca-era demo scripts generated), on the 252 self-instruct tasks (or the project's sample).

    /work/venv/bin/python benchmarks/bench_answer.py                           # a small random LLaMA, CPU
    /work/venv/bin/python benchmarks/bench_answer.py --model runs/tiny/final --tasks 64 --max-new-tokens 32

Each row answers the same prompts, greedy, max_new_tokens tokens each (a random model rarely stops early, so
every row does the same work); answers/s is wall time over the whole set, model load excluded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import ROOT, SELF_INSTRUCT, helpers_module

SELFINSTRUCT = SELF_INSTRUCT / "user_oriented_instructions.jsonl"


def tiny_model(folder: Path) -> Path:
    """A random 4-layer LLaMA (hidden 256) with the project's tokenizer, shaped like the trainer's export."""
    return helpers_module("evaluation").make_tiny_model(
        folder, layers=4, hidden=256, heads=4, kv_heads=2, intermediate=688
    )


def prompts(n: int) -> tuple[list[str], str]:
    from alpaca_ds.evaluate.eval_sets import load_eval_set

    if SELFINSTRUCT.is_file():
        items, source = load_eval_set(str(SELFINSTRUCT)), "self-instruct user-oriented tasks"
    else:
        from alpaca_ds.dataset.template import format_prompt

        records = json.loads((ROOT / "data" / "sample" / "alpaca_sample.json").read_text())
        return [format_prompt(r["instruction"], r["input"]) for r in records][:n], "the project's sample"
    return [i.alpaca_prompt() for i in items][:n], source


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="exported folder; default: a random 4-layer LLaMA (hidden 256)")
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batches", default="1,8,32")
    args = ap.parse_args()
    from alpaca_ds.evaluate.config import DecodingConfig
    from alpaca_ds.evaluate.local import LocalModel

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else tiny_model(Path(tmp) / "model")
        model = LocalModel(folder)
        texts, source = prompts(args.tasks)
        decoding = DecodingConfig(temperature=0, max_new_tokens=args.max_new_tokens)
        model.generate(texts[:2], decoding)  # warm up
        print(
            f"{len(texts)} prompts from {source}, {args.max_new_tokens} new tokens each, greedy, "
            f"{model.device}, {folder if args.model else 'random 4-layer LLaMA'}"
        )
        print(f"{'batch':>6} {'seconds':>8} {'answers/s':>10} {'vs batch 1':>10}")
        base = None
        for batch in (int(b) for b in args.batches.split(",")):
            order = sorted(texts, key=lambda p: -len(model.tokenizer(p)["input_ids"]))  # as evaluate answer does
            start = time.perf_counter()
            for i in range(0, len(order), batch):
                model.generate(order[i : i + batch], decoding)
            seconds = time.perf_counter() - start
            rate = len(texts) / seconds
            base = base or rate
            print(f"{batch:>6} {seconds:>8.2f} {rate:>10.2f} {rate / base:>9.2f}x")


if __name__ == "__main__":
    main()

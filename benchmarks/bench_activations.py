"""Activation memory: alpaca-ds plan's formula against the peak measured on CPU, for small LLaMAs in bf16.

    /work/venv/bin/python benchmarks/bench_activations.py
    /work/venv/bin/python benchmarks/bench_activations.py --json

Each case builds a random LlamaForCausalLM in bf16 (as DeepSpeed's bf16 mode runs it), does one forward and
backward with labels (the loss transformers computes, as alpaca-ds's loop does), and reads the peak of the
bytes allocated during that step from torch's profiler (`profile_memory=True`; "Total Allocated" of the
allocator events, which starts at zero when profiling starts). The parameters and their gradients exist before
the step (a warm-up step allocates the gradients), so the peak is activations and transients only: the quantity
`alpaca_ds.cluster.memory.activation_bytes` models. On CPU, sdpa runs the flash kernel as CUDA does (no
attention matrix kept); a GPU adds allocator rounding, which the plan's reserve covers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

# (hidden, intermediate, layers, heads, vocab, micro-batch, sequence)
CASES = [
    (256, 688, 4, 8, 2000, 2, 256),
    (512, 1376, 4, 8, 1000, 2, 256),
    (512, 1376, 2, 8, 1000, 4, 128),
    (384, 1024, 3, 6, 4000, 1, 384),
]


def measure_peak(d, micro: int, seq: int, attention: str = "sdpa", checkpointing: bool = False, lora=None) -> int:
    """Peak bytes allocated during one forward + backward beyond the parameters and their gradients; `lora`
    (target_modules, lora_dropout, ... of peft's LoraConfig) trains adapters on the frozen model instead."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    from alpaca_ds.cluster.presets import llama_sizes

    sizes = llama_sizes(d.hidden, d.intermediate, d.layers, d.heads, d.heads)
    config = LlamaConfig(**sizes, vocab_size=d.vocab, attn_implementation=attention)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.train()
    if checkpointing:
        from alpaca_ds.train.model import enable_checkpointing  # what model.gradient_checkpointing switches on

        enable_checkpointing(model)
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        if checkpointing:
            model.enable_input_require_grads()  # as alpaca_ds.train.lora.add_adapters does
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, **lora)).to(torch.bfloat16)
    ids = torch.randint(0, d.vocab, (micro, seq))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    model(**batch).loss.backward()  # warm-up: gradients allocated, lazy state built
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = model(**batch).loss
        loss.backward()
        del loss
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    return max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from alpaca_ds.cluster.memory import Dims, activation_bytes

    if not args.json:
        print(
            f"{'h':>4} {'i':>5} {'L':>2} {'a':>2} {'V':>5} {'b':>2} {'s':>4} {'attention':>9} {'ckpt':>5} "
            f"{'measured MiB':>13} {'formula MiB':>12} {'formula/measured':>17}"
        )
    for h, i, L, a, V, b, s in CASES:
        for attention in ("sdpa", "eager"):
            for ckpt in (False, True):
                d = Dims(h, i, L, a, V)
                measured = measure_peak(d, b, s, attention, ckpt)
                formula = activation_bytes(d, b, s, checkpointing=ckpt, attention=attention)
                row = {
                    "hidden": h,
                    "intermediate": i,
                    "layers": L,
                    "heads": a,
                    "vocab": V,
                    "micro": b,
                    "seq": s,
                    "attention": attention,
                    "checkpointing": ckpt,
                    "measured_bytes": measured,
                    "formula_bytes": formula,
                    "ratio": round(formula / measured, 4),
                }
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(
                        f"{h:>4} {i:>5} {L:>2} {a:>2} {V:>5} {b:>2} {s:>4} {attention:>9} {str(ckpt):>5} "
                        f"{measured / 2**20:>13.2f} {formula / 2**20:>12.2f} {formula / measured:>17.3f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()

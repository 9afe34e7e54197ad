"""`alpaca-ds plan`'s table for people, from make_plan's result (the same as `--json` prints)."""

from __future__ import annotations

from alpaca_ds.cluster.plan import ENGINES, GIB

SHORT = {
    "zero2": "ZeRO-2",
    "zero2_offload_optimizer": "Z2 off.opt",
    "zero3": "ZeRO-3",
    "zero3_offload_optimizer": "Z3 off.opt",
    "zero3_offload_all": "Z3 off.all",
}


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _m(n: float) -> str:
    return f"{n / 1e6:,.1f}M" if n < 1e9 else f"{n / 1e9:,.2f}B"


def format_plan(p: dict) -> str:
    m, b, e, w, mem = p["model"], p["batch"], p["engine"], p["workload"], p["memory"]
    c = p["cluster"]
    key, ckpt = e["key"], p["gradient_checkpointing"]
    offload = (
        ("offload optimizer+params" if e["offload_params"] else "offload optimizer")
        if e["offload_optimizer"]
        else "no offload"
    )
    lines = [
        f"alpaca-ds plan: {p['recipe']} on {c['nodes']} node{'s' if c['nodes'] > 1 else ''} x "
        f"{c['gpus_per_node']} GPUs = {c['world']} GPUs",
        f"model     {m['source']}: {m['parameters']:,} parameters; largest layer {m['largest_layer_parameters']:,} "
        f"({m['largest_layer']}); vocab {m['vocab_note']}",
        f"batch     global batch {b['global']} = micro-batch {b['micro']} x accumulation {b['accumulation']} x "
        f"world {b['world']}",
        f"engine    {e['ds_config']}: ZeRO-{e['stage']}, {offload}; gradient checkpointing "
        f"{'on' if ckpt else 'off'}; attention {p['attention']}; batching {p['batching']}",
        *_lora_lines(p),
        f"workload  {w['source']}",
        f"          {w['examples']:,} examples; {w['steps_per_epoch']:,} steps per epoch, {w['total_steps']:,} steps "
        f"({w['epochs']:g} epochs); {_m(w['real_tokens'])} real tokens, {_m(w['computed_tokens'])} computed "
        f"({100 * w['padding_efficiency']:.1f}% padding efficiency); {w['flops']:.3g} FLOPs",
        "",
        f"{'memory per GPU, micro-batch ' + str(mem['micro_batch']) + ' x ' + str(mem['sequence_length']) + ' tokens':<51}"
        f"{'GPU':>11}{'CPU per node':>14}",
    ]

    def row(left: str, gpu: int, cpu: int | None = None) -> str:
        return f"  {left:<49}{_gib(gpu):>11}" + (f"{_gib(cpu):>14}" if cpu is not None else "")

    for k, r in mem["model_states"].items():
        lines.append(
            row(f"model states {'*' if k == key else ' '} {r['label']}", r["gpu_bytes"], r["cpu_bytes_per_node"])
        )
    for c_on, label in ((False, "without gradient checkpointing"), (True, "with gradient checkpointing")):
        value = mem["activations"]["with_checkpointing" if c_on else "without_checkpointing"]
        lines.append(row(f"activations  {'*' if c_on == ckpt else ' '} {label}", value))
    if key:
        bk = e["buckets"]
        gather = "prefetch" if e["stage"] == 3 else "allgather"
        gather_n = bk["stage3_prefetch_bucket_size" if e["stage"] == 3 else "allgather_bucket_size"]
        lines.append(
            row(
                f"ZeRO buffers   reduce {bk['reduce_bucket_size']:.0e} + {gather} {gather_n:.0e}, bf16",
                mem["zero_buffers"][key],
            )
        )
    lines.append(row("reserve        CUDA context, NCCL, fragmentation", mem["reserve"]))
    if mem["total"] is not None:
        lines.append(row("total          the recipe's choices (*)", mem["total"]))
    else:
        lines.append(
            "  total          not estimated: DeepSpeed's estimators cover ZeRO-2 and ZeRO-3 (with "
            "optimizer offload for parameter offload), not this engine config"
        )
    a = p["assumptions"]
    price = "assumed list prices" if a["usd_per_gpu_hour"] is None else f"${a['usd_per_gpu_hour']:g}/GPU-hour"
    lines += [
        "",
        f"per GPU model (the recipe's choices at micro-batch {b['micro']}; time at MFU {a['mfu']:g}, {price}):",
        f"  {'GPU':<16}{'memory':>11}{'needs':>11}  fits  {'max micro (valid)':<18}{'hours':>8}"
        f"{'$/GPU-h':>9}{'cost':>11}  logged mfu",
    ]
    for r in p["gpus"]:
        fits = "yes" if r["fits"] else "no"
        needs = _gib(r["needed_bytes"]) if r["needed_bytes"] is not None else "?"
        micro = f"{r['max_micro_batch']} ({r['max_valid_micro_batch']})" if r["max_micro_batch"] else "-"
        lines.append(
            f"  {r['gpu']:<16}{_gib(r['memory_bytes']):>11}{needs:>11}  {fits:<4}  {micro:<18}"
            f"{r['hours']:>8.2f}{r['usd_per_gpu_hour']:>9.2f}{'$' + format(r['cost_usd'], ',.2f'):>11}"
            f"  {r['logged_mfu']:.2f}"
        )
    lines += [
        "",
        f"largest micro-batch that fits, {mem['sequence_length']} tokens, without / with gradient "
        "checkpointing (- = not even 1; off. = offload):",
        f"  {'GPU':<16}" + "".join(f"{SHORT[k]:>15}" for k, *_ in ENGINES),
    ]
    for r in p["gpus"]:
        cells = [
            f"{_cell(r['max_micro_batch_by_engine'][k]['without_checkpointing'])} / "
            f"{_cell(r['max_micro_batch_by_engine'][k]['with_checkpointing'])}"
            for k, *_ in ENGINES
        ]
        lines.append(f"  {r['gpu']:<16}" + "".join(f"{cell:>15}" for cell in cells))
    lines += _single_gpu_lines(p)
    lines += [
        "",
        "Model states are DeepSpeed's estimators; activations, buffers and time are alpaca-ds's model "
        "(alpaca_ds/cluster/plan.py says how). 'valid' = largest micro-batch that keeps the global batch; "
        "'logged mfu' = what metrics.jsonl's mfu would read.",
    ]
    return "\n".join(lines)


def _lora_lines(p: dict) -> list[str]:
    lora = p["lora"]
    if lora is None:
        return []
    base = f"{_m(lora['quantized_parameters'])} of them in 4-bit NF4" if lora["quantize"] != "none" else "in bf16"
    return [
        f"LoRA      {lora['trainable_parameters']:,} trainable parameters "
        f"({100 * lora['trainable_parameters'] / lora['frozen_parameters']:.2f}%: adapters and modules_to_save, "
        f"with gradients and Adam states); frozen base {_m(lora['frozen_parameters'])} {base} = "
        f"{_gib(lora['frozen_bytes'])}"
    ]


def _single_gpu_lines(p: dict) -> list[str]:
    rows = p["single_gpu_lora"]
    if not rows:
        return []
    mem = p["memory"]
    labels = [
        f"{r['model'].removeprefix('llama-').upper()} {'QLoRA' if r['quantize'] != 'none' else 'LoRA'}" for r in rows
    ]
    lines = [
        "",
        f"one GPU with this recipe's LoRA, engine and micro-batch ({rows[0]['micro_batch']} x "
        f"{mem['sequence_length']} tokens, gradient checkpointing {'on' if p['gradient_checkpointing'] else 'off'}"
        "): memory needed, and whether it fits",
        f"  {'GPU':<16}" + "".join(f"{label:>18}" for label in labels),
        f"  {'(needs)':<16}" + "".join(f"{_gib(r['needed_bytes']) if r['needed_bytes'] else '?':>18}" for r in rows),
    ]
    for gpu in rows[0]["fits"]:
        lines.append(f"  {gpu:<16}" + "".join(f"{'yes' if r['fits'][gpu] else 'no':>18}" for r in rows))
    return lines


def _cell(n: int) -> str:
    return "-" if n == 0 else ("4096+" if n >= 4096 else str(n))

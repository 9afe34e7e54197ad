"""`alpaca-ds plan`: what a run needs and what it costs, before the GPUs are rented.

    alpaca-ds plan --config launch/recipes/alpaca_7b.yaml --nodes 1 --gpus-per-node 8
    alpaca-ds plan --config launch/recipes/alpaca_13b.yaml --nodes 2 --gpus-per-node 8 --gpu A100-40GB --json

Nothing is downloaded: arch.py finds the architecture and counts its parameters; workload.py counts the steps,
tokens and FLOPs; this module sizes memory per engine and GPU and puts the plan together (plan_table.py prints it).

Memory per GPU = model states + activations + ZeRO buffers + a reserve.
- Model states (parameters, gradients, optimizer states): DeepSpeed's own estimators, term by term
  (`estimate_zero2_model_states_mem_needs`, `estimate_zero3_model_states_mem_needs` with zero_init, as alpaca-ds
  loads every model under zero.Init); a test compares with those functions. ZeRO-3 without offload:
  4 x largest layer + 18 bytes x parameters / GPUs.
- Activations (bf16 LLaMA as transformers runs it; bytes, b = micro-batch, s = padded row length, h hidden,
  i intermediate, a heads, V vocabulary, L layers), counted from the tensors autograd saves:
    per layer      s·b·(24h + 8i) + 4·a·s·b        fused attention (sdpa, flash_attention_2)
                   s·b·(24h + 8i) + 6·a·s²·b       eager attention (fp32 softmax + bf16 probabilities)
      24h = two RMSNorms (fp32 input copy 4h + bf16 normalised 2h + scaled output 2h, each), q, k, v (6h),
      attention output (2h); 8i = SwiGLU's gate, SiLU, up and product. k and v at full width (repeat_kv, what
      transformers does on CUDA with a padding mask).
    after layers   s·b·(8h + 4V)                   final norm and the fp32 log-softmax of the loss
    loss peak      8·s·b·V                         fp32 logit gradients at the start of the backward
    checkpointing  L·2·s·b·h + max(after + loss peak, one layer + after)   (layer inputs; one layer recomputed)
  Not Korthikanti et al.'s s·b·h·(34 + 5·a·s/h): that is GPT's (4h MLP, dropout masks, unfused attention);
  LLaMA has a SwiGLU MLP, RMSNorms computed in fp32 and no dropout, and the loss's fp32 logits dominate short
  sequences. benchmarks/bench_activations.py measures the peak on CPU (torch's profiler) against this: within
  0.5% without checkpointing; with it from 2% under to 15% over (eager attention). Packed rows add their
  b·s² fp32 mask (not measured).
- ZeRO buffers: 2 bytes x (reduce_bucket_size + stage3_prefetch_bucket_size, or allgather_bucket_size for
  ZeRO-2) from the engine YAML, each capped at the parameter count.
- Reserve: CUDA context, NCCL and allocator fragmentation (--reserve-gib, 2 GiB by default).
- LoRA and QLoRA (model.lora): a frozen base (bf16 or NF4) beside the trainable parameters' states, and the
  activations of frozen weights; memory.py says how. A LoRA recipe also gets a one-GPU table: LLaMA-7B and 13B
  with LoRA and with QLoRA.

Time: model FLOPs as PaLM counts them, (6·N + 12·L·h·s) per computed token, N the parameters that multiply
(all but the input embedding), counted on the padded rows the GPUs really compute (the sampler's own batches
for this world size), x 4/3 with gradient checkpointing, x 2/3 with LoRA (no weight gradients); divided by GPUs x
peak bf16 x the assumed MFU.
The `mfu` alpaca-ds logs in metrics.jsonl counts 6 x parameters x real tokens only; the plan prints what that
number would read, to compare a run against its plan. Offload's extra PCIe and CPU time is not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence

from alpaca_ds.cluster.arch import Arch, resolve_arch
from alpaca_ds.cluster.memory import (
    DS_BUFFER_FACTOR,
    activation_bytes,
    lora_model_states,
    lora_shape,
    trained_modules,
    zero2_model_states,
    zero3_model_states,
)
from alpaca_ds.cluster.presets import GPUS, Gpu
from alpaca_ds.cluster.workload import dataset_lengths, workload
from alpaca_ds.common.errors import UserError
from alpaca_ds.train.config import TrainConfig

GIB = 2**30
DEFAULT_MFU = 0.4
DEFAULT_RESERVE_GIB = 2.0
# DeepSpeed's defaults for the bucket keys when the engine YAML leaves them out
BUCKET_DEFAULTS = {"reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e7}

# (key, label, stage, offload optimizer, offload parameters)
ENGINES = (
    ("zero2", "ZeRO-2", 2, False, False),
    ("zero2_offload_optimizer", "ZeRO-2 + offload optimizer", 2, True, False),
    ("zero3", "ZeRO-3", 3, False, False),
    ("zero3_offload_optimizer", "ZeRO-3 + offload optimizer", 3, True, False),
    ("zero3_offload_all", "ZeRO-3 + offload optimizer+params", 3, True, True),
)


def model_states(
    total_params: int, largest_layer_params: int, gpus_per_node: int, nodes: int, lora: dict | None = None
) -> dict[str, dict]:
    out = {}
    for key, label, stage, opt, params in ENGINES:
        if lora is not None:
            cpu, gpu = lora_model_states(
                lora["frozen_bytes"],
                lora["trainable_parameters"],
                largest_layer_params,
                gpus_per_node,
                nodes,
                stage,
                opt,
                params,
            )
        elif stage == 3:
            cpu, gpu = zero3_model_states(total_params, largest_layer_params, gpus_per_node, nodes, opt, params)
        else:
            cpu, gpu = zero2_model_states(total_params, gpus_per_node, nodes, opt)
        out[key] = {"label": label, "gpu_bytes": gpu, "cpu_bytes_per_node": cpu}
    return out


# ---------------------------------------------------------------- the plan


def engine_of(cfg: TrainConfig) -> dict:
    from alpaca_ds.train.ds_config import load_engine_yaml

    engine = load_engine_yaml(cfg.ds_config)
    zo = engine.get("zero_optimization", {}) or {}
    stage = int(zo.get("stage", 0))
    opt = (zo.get("offload_optimizer") or {}).get("device", "none") in ("cpu", "nvme")
    params = (zo.get("offload_param") or {}).get("device", "none") in ("cpu", "nvme")
    key = next((k for k, _, s, o, p in ENGINES if (s, o, p) == (stage, opt, params and stage == 3)), None)
    buckets = {k: float(zo.get(k, v)) for k, v in BUCKET_DEFAULTS.items()}
    return {
        "ds_config": cfg.ds_config,
        "stage": stage,
        "offload_optimizer": opt,
        "offload_params": params,
        "key": key,
        "buckets": buckets,
    }


def zero_buffers(buckets: dict, stage: int, total_params: int, trainable_params: int | None = None) -> int:
    """Gradients reduce only for trainable parameters; ZeRO-3 gathers every parameter, ZeRO-2 the updated ones."""
    trainable = total_params if trainable_params is None else trainable_params
    gather = buckets["stage3_prefetch_bucket_size" if stage == 3 else "allgather_bucket_size"]
    gathered = total_params if stage == 3 else trainable
    return int(2 * (min(buckets["reduce_bucket_size"], trainable) + min(gather, gathered)))


def memory_needs(
    cfg: TrainConfig, a: Arch, engine: dict, gpus_per_node: int, nodes: int, micro: int, seq: int, reserve: int, lora
) -> dict:
    """Per-GPU memory of `cfg` on `a` for every engine, with `lora` (a LoraConfig) or full fine-tuning (None)."""
    shape = lora_shape(a.config, lora) if lora is not None else None
    kw = {
        "attention": cfg.model.attn_implementation,
        "packed": cfg.data.batching == "packed",
        "trained": trained_modules(lora),
        "dropout": lora is not None and lora.dropout > 0,
    }
    states = model_states(a.total_params, a.largest_layer_params, gpus_per_node, nodes, shape)
    act = {c: activation_bytes(a.dims, micro, seq, checkpointing=c, **kw) for c in (False, True)}
    trainable = shape["trainable_parameters"] if shape else None
    buffers = {
        key: zero_buffers(engine["buckets"], stage, a.total_params, trainable) for key, _, stage, _, _ in ENGINES
    }
    key = engine["key"]
    total = (states[key]["gpu_bytes"] + act[cfg.model.gradient_checkpointing] + buffers[key] + reserve) if key else None
    return {
        "lora": shape,
        "states": states,
        "activations": act,
        "buffers": buffers,
        "total": total,
        "per_row": {c: activation_bytes(a.dims, 1, seq, checkpointing=c, **kw) for c in (False, True)},
    }


def single_gpu_lora(cfg: TrainConfig, engine: dict, seq: int, reserve: int, gpus: Sequence[str]) -> list[dict]:
    """A LoRA recipe's settings on one GPU for LLaMA-7B and 13B, with a bf16 and a 4-bit (QLoRA) base."""
    if cfg.model.lora is None:
        return []
    rows = []
    for name in ("llama-7b", "llama-13b"):
        a = resolve_arch(cfg, name)
        for quantize in ("none", "nf4"):
            lora = cfg.model.lora.model_copy(update={"quantize": quantize})
            need = memory_needs(cfg, a, engine, 1, 1, cfg.batch.micro_batch_size, seq, reserve, lora)["total"]
            rows.append(
                {
                    "model": name,
                    "quantize": quantize,
                    "micro_batch": cfg.batch.micro_batch_size,
                    "needed_bytes": need,
                    "fits": {g: need is not None and need <= GPUS[g].memory_bytes for g in gpus},
                }
            )
    return rows


def make_plan(
    cfg: TrainConfig,
    recipe: str,
    nodes: int,
    gpus_per_node: int,
    *,
    arch: str | None = None,
    dataset: str | None = None,
    seq_len: int | None = None,
    gpus: Sequence[str] = (),
    mfu: float = DEFAULT_MFU,
    usd_per_gpu_hour: float | None = None,
    reserve_gib: float = DEFAULT_RESERVE_GIB,
) -> dict:
    world = nodes * gpus_per_node
    micro, accum = cfg.batch.resolve(world)  # refuses an impossible combination with the arithmetic
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu}: a fraction of the peak, between 0 and 1")
    unknown = [g for g in gpus if g not in GPUS]
    if unknown:
        raise UserError(f"--gpu {unknown[0]}: unknown; known GPU models: {', '.join(GPUS)}")
    lengths, data_source, manifest = dataset_lengths(cfg, dataset)
    a = resolve_arch(cfg, arch, manifest["tokenizer"]["vocab_size"] if manifest else None)
    engine = engine_of(cfg)
    work = workload(cfg, lengths, world, micro, accum, a)
    seq = seq_len or work["longest_row"]
    ckpt, attention = cfg.model.gradient_checkpointing, cfg.model.attn_implementation
    reserve = int(reserve_gib * GIB)
    mem = memory_needs(cfg, a, engine, gpus_per_node, nodes, micro, seq, reserve, cfg.model.lora)
    states, act, buffers, needed = mem["states"], mem["activations"], mem["buffers"], mem["total"]
    recipe_key = engine["key"]

    def max_micro(gpu: Gpu, key: str, c: bool) -> int:
        fixed = states[key]["gpu_bytes"] + buffers[key] + reserve
        return max(0, min(4096, (gpu.memory_bytes - fixed) // mem["per_row"][c]))

    rows = []
    for name in gpus or GPUS:
        gpu = GPUS[name]
        seconds = work["flops"] / (world * gpu.bf16_tflops * 1e12 * mfu)
        price = gpu.usd_per_hour if usd_per_gpu_hour is None else usd_per_gpu_hour
        by_engine = {
            key: {"without_checkpointing": max_micro(gpu, key, False), "with_checkpointing": max_micro(gpu, key, True)}
            for key, *_ in ENGINES
        }
        largest = by_engine[recipe_key]["with_checkpointing" if ckpt else "without_checkpointing"] if recipe_key else 0
        valid = [
            m
            for m in range(1, min(largest, cfg.batch.global_batch_size // world) + 1)
            if cfg.batch.global_batch_size % (m * world) == 0
        ]
        rows.append(
            {
                "gpu": name,
                "memory_bytes": gpu.memory_bytes,
                "bf16_tflops": gpu.bf16_tflops,
                "needed_bytes": needed,
                "fits": needed is not None and needed <= gpu.memory_bytes,
                "max_micro_batch": largest,
                "max_valid_micro_batch": valid[-1] if valid else 0,
                "max_micro_batch_by_engine": by_engine,
                "hours": seconds / 3600,
                "usd_per_gpu_hour": price,
                "cost_usd": seconds / 3600 * world * price,
                "logged_mfu": (
                    6 * a.total_params * work["real_tokens"] / (seconds * world * gpu.bf16_tflops * 1e12)
                    if seconds
                    else 0.0
                ),
            }
        )
    return {
        "recipe": recipe,
        "cluster": {"nodes": nodes, "gpus_per_node": gpus_per_node, "world": world},
        "model": {
            "name": a.name,
            "source": a.source,
            "parameters": a.total_params,
            "largest_layer_parameters": a.largest_layer_params,
            "largest_layer": a.largest_layer,
            "matmul_parameters": a.matmul_params,
            "vocab_size": a.vocab_size,
            "vocab_note": a.vocab_note,
            "hidden_size": a.dims.hidden,
            "intermediate_size": a.dims.intermediate,
            "layers": a.dims.layers,
            "heads": a.dims.heads,
        },
        "batch": {"global": cfg.batch.global_batch_size, "micro": micro, "accumulation": accum, "world": world},
        "engine": {k: v for k, v in engine.items()},
        "gradient_checkpointing": ckpt,
        "attention": attention,
        "batching": cfg.data.batching,
        "workload": {"source": data_source, **work},
        "lora": mem["lora"],
        "single_gpu_lora": single_gpu_lora(cfg, engine, seq, reserve, gpus or list(GPUS)),
        "memory": {
            "micro_batch": micro,
            "sequence_length": seq,
            "model_states": states,
            "activations": {"without_checkpointing": act[False], "with_checkpointing": act[True]},
            "zero_buffers": buffers,
            "reserve": reserve,
            "total": needed,
        },
        "assumptions": {
            "mfu": mfu,
            "usd_per_gpu_hour": usd_per_gpu_hour,
            "reserve_gib": reserve_gib,
            "zero_init": True,
            "cpu_buffer_factor": DS_BUFFER_FACTOR,
        },
        "gpus": rows,
    }

"""`alpaca-ds plan`: what a run needs and what it costs, before the GPUs are rented.

    alpaca-ds plan --config launch/recipes/alpaca_7b.yaml --nodes 1 --gpus-per-node 8
    alpaca-ds plan --config launch/recipes/alpaca_13b.yaml --nodes 2 --gpus-per-node 8 --gpu A100-40GB --json

Nothing is downloaded: the architecture comes from the recipe's `model.init_config`, a local model folder's
config.json, `--arch` (a preset name or a config.json), or a preset matched by hub id (presets.py); the model is
built on the meta device to count its parameters exactly.

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

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alpaca_ds.cluster import alpaca_lengths
from alpaca_ds.cluster.memory import (
    DS_BUFFER_FACTOR,
    Dims,
    activation_bytes,
    lora_model_states,
    lora_shape,
    trained_modules,
    zero2_model_states,
    zero3_model_states,
)
from alpaca_ds.cluster.presets import ALIASES, ARCHS, GPUS, PAD_ADDED, Gpu
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


# ---------------------------------------------------------------- the model's architecture


@dataclass(frozen=True)
class Arch:
    name: str
    source: str
    config: dict
    vocab_size: int
    vocab_note: str
    total_params: int
    largest_layer_params: int
    largest_layer: str
    matmul_params: int  # all but the input embedding (a lookup); with tied embeddings, all

    @property
    def dims(self) -> Dims:
        c = self.config
        return Dims(
            c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"], self.vocab_size
        )


def count_params(config: dict) -> tuple[int, int, str, int]:
    """(total, largest layer, its name, matmul params) of the causal LM built from `config` on the meta device.

    Largest layer as DeepSpeed's model_to_params: the module with the most parameters of its own; shared
    parameters counted once (by identity: meta tensors have no storage to tell them apart).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version", "torch_dtype")}
    hf_config = AutoConfig.for_model(kwargs.pop("model_type", "llama"), **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest, name = 0, ""
    for module_name, module in model.named_modules():
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if n > largest:
            largest, name = n, module_name
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return total, largest, name, total - (0 if tied else embedding.numel())


def resolve_arch(cfg: TrainConfig, arch: str | None = None, dataset_vocab: int | None = None) -> Arch:
    """The architecture the run trains, without downloading anything."""
    if arch is not None:
        if arch.lower() in ARCHS:
            name, source, config = arch.lower(), f"--arch {arch} (preset)", dict(ARCHS[arch.lower()])
        else:
            path = Path(arch)
            path = path / "config.json" if path.is_dir() else path
            if not path.is_file():
                raise UserError(f"--arch {arch}: neither a preset ({', '.join(ARCHS)}) nor a config.json")
            name, source, config = arch, f"--arch {path}", _read_config(path)
    elif cfg.model.init_config is not None:
        name, source = "model.init_config", "the recipe's model.init_config (random init)"
        config = {"model_type": "llama", **cfg.model.init_config}
    else:
        model = cfg.model.name_or_path
        local = Path(model).expanduser() / "config.json"
        if local.is_file():
            name, source, config = model, f"{local}", _read_config(local)
        elif model.lower() in ALIASES:
            name = ALIASES[model.lower()]
            source, config = f"model.name_or_path {model} = preset {name}", dict(ARCHS[name])
        else:
            raise UserError(
                f"model.name_or_path {model!r}: no local config.json and no preset for it; pass its "
                f"architecture with --arch (a preset: {', '.join(ARCHS)}; or a config.json)"
            )
    base_vocab = config["vocab_size"]
    if dataset_vocab is not None:
        vocab, note = dataset_vocab, f"{dataset_vocab:,} from the dataset's tokenizer ({base_vocab:,} in the config)"
    elif name in PAD_ADDED:
        vocab = base_vocab + PAD_ADDED[name]
        note = f"{vocab:,} = {base_vocab:,} + {PAD_ADDED[name]} added ([PAD], as Alpaca adds it)"
    else:
        vocab, note = base_vocab, f"{base_vocab:,} (no dataset to say which tokens it adds)"
    config = {**config, "vocab_size": vocab}
    total, largest, layer, matmul = count_params(config)
    return Arch(name, source, config, vocab, note, total, largest, layer, matmul)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable config.json ({e})") from None
    missing = [
        k
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if k not in config
    ]
    if missing:
        raise UserError(f"{path}: a LLaMA-style config needs {', '.join(missing)}")
    return config


# ---------------------------------------------------------------- the workload


def dataset_lengths(cfg: TrainConfig, dataset: str | None) -> tuple[np.ndarray, str, dict | None]:
    """Example lengths of the training split, the manifest when a dataset is built, else Alpaca's distribution."""
    from alpaca_ds.dataset.shards import TokenizedDataset

    folder = Path(dataset or cfg.data.path)
    if (folder / "manifest.json").is_file():
        ds = TokenizedDataset(folder, "train")
        return np.asarray(ds.lengths, dtype=np.int64), f"{folder} (manifest)", ds.manifest
    if dataset is not None:
        raise UserError(f"--dataset {dataset}: no manifest.json (not a built dataset)")
    lengths = np.repeat(
        np.arange(alpaca_lengths.SHORTEST, alpaca_lengths.SHORTEST + len(alpaca_lengths.COUNTS)), alpaca_lengths.COUNTS
    )
    return lengths, f"{folder} not built: assuming {alpaca_lengths.SOURCE}", None


def workload(cfg: TrainConfig, lengths: np.ndarray, world: int, micro: int, accum: int, arch: Arch) -> dict:
    """Steps, tokens and FLOPs of the run, from the sampler's own batches for this world size (epoch 0)."""
    from alpaca_ds.dataset.sampler import MicroBatchSampler

    # One rank of micro x world rows per micro-step and accumulation `accum` draws the same global rows as
    # `world` ranks of `micro`: rank r's micro-batch is rows [r*micro, (r+1)*micro) of each.
    sampler = MicroBatchSampler(
        lengths,
        micro * world,
        world_size=1,
        rank=0,
        seed=cfg.data.seed,
        mode=cfg.data.batching,
        pack_length=cfg.data.pack_length,
        accumulation=accum,
    )
    d = arch.dims
    real = slots = flops = 0.0
    longest = 0
    for step_rows in sampler.epoch_batches(0):
        row_lengths = np.array([int(lengths[row].sum()) for row in step_rows]).reshape(world, micro)
        padded = row_lengths.max(axis=1)  # each rank pads its micro-batch to its longest row
        real += row_lengths.sum()
        slots += float((padded * micro).sum())
        flops += float((padded * micro * (6 * arch.matmul_params + 12 * d.layers * d.hidden * padded)).sum())
        longest = max(longest, int(padded.max()))
    steps_per_epoch = len(sampler.epoch_batches(0)) // accum
    total_steps = min(cfg.optim.epochs * steps_per_epoch, cfg.optim.max_steps or math.inf)
    scale = total_steps / steps_per_epoch
    if cfg.model.gradient_checkpointing:
        flops *= 4 / 3  # the forward runs twice
    if cfg.model.lora is not None:
        flops *= 2 / 3  # frozen weights need no weight gradients: forward 2N + input gradients 2N of 6N
    return {
        "examples": int(len(lengths)),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": int(total_steps),
        "epochs": round(scale, 4),
        "real_tokens": int(real * scale),
        "computed_tokens": int(slots * scale),
        "padding_efficiency": round(real / slots, 4),
        "longest_row": longest,
        "flops": flops * scale,
    }


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

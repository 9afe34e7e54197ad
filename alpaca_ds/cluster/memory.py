"""GPU memory of a training run: model states (DeepSpeed's estimators, plus a frozen base for LoRA) and activations.

The formulas are explained in plan.py's docstring. LoRA (model.lora) changes two things:
- Model states: the frozen base is held in bf16 (2 bytes a parameter) or, with QLoRA, NF4 (half a byte, plus
  the block constants: one 8-bit absmax per 64 weights and an fp32 one per 256 blocks, double quantization) for
  the decoder's Linear layers; it is sharded over the GPUs by ZeRO-3 and replicated by ZeRO-2. Only the trainable
  parameters (adapters and modules_to_save) have gradients, fp32 masters and Adam states: DeepSpeed's estimators
  applied to their count. The 4 x largest-layer term of ZeRO-3 (a gathered layer and its gradient) is kept as it
  is, a bound: a frozen layer gathers without a gradient.
- Activations: a frozen Linear keeps no input (see activation_bytes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

DS_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor default (CPU memory estimates)
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # per quantized weight: 4 bits + double-quantized block constants


# ---------------------------------------------------------------- model states (DeepSpeed's estimators)


def zero3_model_states(
    total_params: int,
    largest_layer_params: int,
    gpus_per_node: int,
    nodes: int,
    offload_optimizer: bool,
    offload_params: bool,
    zero_init: bool = True,
    buffer_factor: float = DS_BUFFER_FACTOR,
) -> tuple[int, int]:
    """(CPU bytes per node, GPU bytes) exactly as deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs."""
    total_gpus = nodes * gpus_per_node
    gpus_factor = 1 / nodes
    largest_layer_memory = 4 * largest_layer_params  # the gathered fp16 layer and its gradient
    if offload_optimizer:
        if offload_params:
            gpu = largest_layer_memory
            cpu = total_params * (18 * gpus_factor if zero_init else max(4 * gpus_per_node, 18 * gpus_factor))
        else:
            gpu = largest_layer_memory + int(2 * total_params / total_gpus)
            cpu = total_params * (16 * gpus_factor if zero_init else max(4 * gpus_per_node, 16 * gpus_factor))
    else:
        # 18 bytes per parameter, sharded: bf16 parameter + bf16 gradient + fp32 gradient + fp32 master + Adam's 2
        gpu = largest_layer_memory + int(18 * total_params / total_gpus)
        cpu = (largest_layer_params if zero_init else total_params) * 4 * gpus_per_node
    return int(cpu * buffer_factor), int(gpu)


def zero2_model_states(
    total_params: int, gpus_per_node: int, nodes: int, offload_optimizer: bool, buffer_factor: float = DS_BUFFER_FACTOR
) -> tuple[int, int]:
    """(CPU bytes per node, GPU bytes) exactly as deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs."""
    total_gpus = nodes * gpus_per_node
    if offload_optimizer:
        gpu = 2 * total_params
        cpu = total_params * max(4 * total_gpus, 16) * buffer_factor
    else:
        gpu = 2 * total_params + int(18 * total_params / total_gpus)  # replicated bf16 parameters + sharded rest
        cpu = total_params * 4 * gpus_per_node * buffer_factor
    return int(cpu), int(gpu)


def lora_model_states(
    frozen_bytes: int,
    trainable_params: int,
    largest_layer_params: int,
    gpus_per_node: int,
    nodes: int,
    stage: int,
    offload_optimizer: bool,
    offload_params: bool,
) -> tuple[int, int]:
    """(CPU bytes per node, GPU bytes) of a frozen base of `frozen_bytes` plus trainable parameters' states."""
    total_gpus = nodes * gpus_per_node
    if stage == 3:
        cpu, gpu = zero3_model_states(
            trainable_params, largest_layer_params, gpus_per_node, nodes, offload_optimizer, offload_params
        )
        if offload_params:
            return int(cpu + frozen_bytes / nodes), gpu
        return cpu, int(gpu + frozen_bytes / total_gpus)
    cpu, gpu = zero2_model_states(trainable_params, gpus_per_node, nodes, offload_optimizer)
    return cpu, gpu + frozen_bytes


# ---------------------------------------------------------------- activations


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int


def activation_bytes(
    d: Dims,
    micro: int,
    seq: int,
    *,
    checkpointing: bool,
    attention: str = "sdpa",
    packed: bool = False,
    trained: frozenset[str] | None = None,
    dropout: bool = False,
) -> int:
    """Peak activation memory of one forward + backward on one GPU (see the module docstring of plan.py).

    `trained`: the modules whose weights train (LoRA's target_modules and modules_to_save); None = every weight
    (full fine-tuning). A weight's gradient needs the input it multiplies, so a frozen Linear keeps no input and a
    frozen RMSNorm keeps only its fp32 input (4h, not 6h); a LoRA target with `dropout` keeps its dropped-out
    input (bf16) and the mask (1 byte) instead of the shared input.
    """
    sb = seq * micro
    full = trained is None

    def kept(names: set[str], width: int, kept_anyway: bool = False) -> int:
        hit = names if full else names & trained
        if not hit:
            return 0
        if dropout and not full:
            return 3 * width * len(hit)
        return 0 if kept_anyway else 2 * width

    norm = 6 * d.hidden if full else 4 * d.hidden
    attn = 6 * d.heads * seq * seq * micro if attention == "eager" else 4 * d.heads * sb
    # two RMSNorms; q, k, v (6h); the attention output (2h, which sdpa keeps for its backward anyway);
    # SwiGLU's gate, SiLU and up (6i); and the inputs of the Linears that train
    layer = (
        sb
        * (
            2 * norm
            + 8 * d.hidden
            + 6 * d.intermediate
            + kept({"q_proj", "k_proj", "v_proj"}, d.hidden)
            + kept({"o_proj"}, d.hidden, kept_anyway=True)
            + kept({"gate_proj", "up_proj"}, d.hidden)
            + kept({"down_proj"}, d.intermediate)
        )
        + attn
    )
    after = sb * (norm + kept({"lm_head"}, d.hidden) + 4 * d.vocab)  # final norm, lm_head's input, fp32 logits
    loss_peak = 8 * sb * d.vocab
    mask = 4 * micro * seq * seq if packed else 0
    # frozen embeddings: nothing before the first trained weight is recorded (layer 0's first RMSNorm)
    first = sb * norm if not full and "embed_tokens" not in trained else 0
    if not checkpointing:
        return d.layers * layer - first + after + loss_peak + mask
    # The backward of the recomputed layer also holds its output's and its MLP's gradients (2h + 2i): with every
    # weight training, the layer's larger saved set covers them (measured); with a frozen one it does not.
    in_flight = 0 if full else sb * (2 * d.hidden + 2 * d.intermediate)
    return d.layers * 2 * sb * d.hidden + max(after + loss_peak, layer + after + in_flight) + mask


def lora_shape(config: dict, lora) -> dict:
    """Trainable parameters (adapters + modules_to_save, peft's own count on the meta device), the decoder's
    Linear weights a 4-bit base quantizes (all but lm_head, which transformers keeps in 16 bits), and the frozen
    base's bytes for `lora` (alpaca_ds.config.LoraConfig)."""
    base, quantizable, trainable = _lora_counts(
        json.dumps(config, sort_keys=True),
        lora.model_copy(update={"quantize": "none", "dropout": 0.0, "merged_export": None}),
    )
    frozen = 2 * base if lora.quantize == "none" else int(NF4_BYTES * quantizable + 2 * (base - quantizable))
    return {
        "trainable_parameters": trainable,
        "frozen_parameters": base,
        "quantized_parameters": quantizable if lora.quantize != "none" else 0,
        "frozen_bytes": frozen,
        "quantize": lora.quantize,
    }


@lru_cache(maxsize=16)
def _lora_counts(config_json: str, lora) -> tuple[int, int, int]:
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from alpaca_ds.train.lora import peft_config

    kwargs = {
        k: v
        for k, v in json.loads(config_json).items()
        if k not in ("architectures", "transformers_version", "torch_dtype")
    }
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kwargs.pop("model_type", "llama"), **kwargs))
    base = sum({id(p): p.numel() for p in model.parameters()}.values())
    quantizable = sum(
        m.weight.numel() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"
    )
    model = get_peft_model(model, peft_config(lora, None))
    return base, quantizable, sum(p.numel() for p in model.parameters() if p.requires_grad)


def trained_modules(lora) -> frozenset[str] | None:
    """What activation_bytes needs to know of a LoRA run: the modules whose weights train (None: all)."""
    return None if lora is None else frozenset(lora.target_modules) | frozenset(lora.modules_to_save)

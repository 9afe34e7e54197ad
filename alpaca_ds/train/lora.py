"""LoRA and QLoRA through peft: adapters on a frozen base, the adapter folder, and the merged model.

A recipe switches it on with a `model.lora` section (launch/recipes/alpaca_lora_7b.yaml):

    alpaca-ds train --config launch/recipes/alpaca_lora_7b.yaml --num-gpus 1

Under ZeRO-3 the base is loaded partitioned, as for full fine-tuning; peft's adapters are created whole on every
rank (the same seed on each) and deepspeed.initialize partitions them too. Only adapter parameters (and
modules_to_save) require gradients, and only they reach the optimizer, so only they carry fp32 masters and Adam
states, and checkpoints hold only them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alpaca_ds.common.errors import UserError
from alpaca_ds.train.config import LoraConfig, ModelConfig

ADAPTER = "adapter"  # <output_dir>/adapter: the peft adapter folder written at the end of a LoRA run


def check_quantization(cfg: ModelConfig, gpu_here: bool = True) -> None:
    """QLoRA's conditions, checked before anything loads; the GPU and bitsandbytes where the ranks run."""
    if cfg.lora is None or cfg.lora.quantize == "none":
        return
    if cfg.name_or_path is None:
        raise UserError(
            "model.lora.quantize nf4: QLoRA quantizes pretrained weights as they load; set "
            "model.name_or_path (a random model.init_config has nothing to quantize)"
        )
    if not gpu_here:
        return
    if not torch.cuda.is_available():
        raise UserError(
            "model.lora.quantize nf4: QLoRA's 4-bit base needs a CUDA GPU (bitsandbytes' kernels) and "
            "this machine has none; set model.lora.quantize=none to train LoRA on a bf16 base"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(
            "model.lora.quantize nf4: bitsandbytes is not installed; `pip install bitsandbytes` (alpaca-ds[qlora])"
        ) from None


def quantization_config(cfg: ModelConfig):
    """transformers' 4-bit config for QLoRA, or None. The 4-bit weights are stored in bf16 tensors
    (bnb_4bit_quant_storage): ZeRO-3 partitions and gathers tensors of the model's dtype, not uint8."""
    if cfg.lora is None or cfg.lora.quantize == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )


def load_kwargs(cfg: ModelConfig, ds_config: dict) -> dict:
    """from_pretrained's quantization arguments: none for LoRA; for QLoRA the 4-bit config and, unless ZeRO-3
    places the partitions itself, this rank's GPU (bitsandbytes quantizes as the weights land there)."""
    quantization = quantization_config(cfg)
    if quantization is None:
        return {}
    zero3 = (ds_config.get("zero_optimization") or {}).get("stage") == 3
    return {"quantization_config": quantization, **({} if zero3 else {"device_map": {"": torch.cuda.current_device()}})}


def peft_config(cfg: LoraConfig, base: str | None):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        modules_to_save=list(cfg.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    )


def add_adapters(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """`model` wrapped by peft: base frozen, adapters initialised from model.init_seed (the same on every rank)."""
    from peft import get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for key in ("target_modules", "modules_to_save"):
        missing = [m for m in getattr(cfg.lora, key) if m not in names]
        if missing:
            raise UserError(
                f"model.lora.{key}: the model has no module named {missing[0]!r}; LLaMA's are "
                "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, embed_tokens, lm_head"
            )
    if cfg.gradient_checkpointing:
        # recomputed layers must see an input that requires grad, or the frozen base's checkpoints drop the
        # adapters' gradients
        model.enable_input_require_grads()
    torch.manual_seed(cfg.init_seed)
    dtype = model.dtype
    model = get_peft_model(model, peft_config(cfg.lora, cfg.name_or_path))
    # Under ZeRO-3 peft makes the adapters fp32 (the partitioned base hides its dtype) and modules_to_save copies
    # in the base's; ZeRO-3 flattens all trainable parameters into one buffer of one dtype.
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(dtype)
    return model


def adapter_state(model, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors, in peft's file naming, from a consolidated state dict of the peft model; refuses
    a missing or empty one (the known failure: ZeRO-3 partitions saved without gathering, 0 elements each)."""
    from peft import get_peft_model_state_dict

    # Only trained tensors: peft would add a targeted lm_head's frozen base weight (the resized vocabulary), which
    # the base the adapter is loaded onto has anyway.
    adapter = get_peft_model_state_dict(model, state_dict=state_dict, save_embedding_layers=False)
    # what must be there: the adapter's share of the trainable parameters' names
    expected = set(
        get_peft_model_state_dict(
            model,
            state_dict={name: torch.ones(1) for name, p in model.named_parameters() if p.requires_grad},
            save_embedding_layers=False,
        )
    )
    problems = sorted(expected - set(adapter)) + sorted(k for k, v in adapter.items() if v.numel() == 0)
    if problems or not adapter:
        raise UserError(
            f"adapter export: tensor {problems[0] if problems else '(none at all)'} is missing or empty; "
            "the consolidated weights do not hold the trained adapter"
        )
    return adapter


def write_adapter(model, adapter: dict[str, torch.Tensor], out: Path, dtype: torch.dtype) -> None:
    """An adapter folder that `PeftModel.from_pretrained(base, out)` loads (rank 0 only)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].save_pretrained(out)
    save_file(
        {k: v.to(dtype).contiguous() for k, v in adapter.items()},
        out / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )


def base_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The frozen base's tensors under the plain model's names (peft's prefix and base_layer removed)."""
    out = {}
    for name, tensor in state_dict.items():
        if ".lora_" in name or ".modules_to_save." in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".original_module.", ".")
        out[name] = tensor
    return out


def load_with_adapter(base: torch.nn.Module, adapter_dir: Path):
    """peft's own loading of an adapter folder onto a base model (which has the run's added token rows)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, adapter_dir, autocast_adapter_dtype=False)
    model.eval()
    return model

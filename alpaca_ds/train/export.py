"""A consolidated HF folder (config, safetensors, tokenizer, generation config) that transformers loads.

    alpaca-ds export runs/tiny/checkpoints/step-00000042 runs/tiny/export-42

The end of a run exports from the live engine; `alpaca-ds export` does it from any checkpoint, offline. A LoRA
run exports its adapter folder (adapter/, which peft loads) and, merged into the base, final/.
Either way the folder is reloaded with transformers and its logits checked before success is reported.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from alpaca_ds.common.errors import UserError

SKELETON = "model"  # <output_dir>/model: the HF config and tokenizer of the run, written at its start
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def write_skeleton(model: torch.nn.Module, tokenizer, run_dir: Path) -> None:
    folder = run_dir / SKELETON
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def model_from_state(state_dict: dict[str, torch.Tensor], run_dir: Path, dtype: str) -> torch.nn.Module:
    """The run's HF model holding `state_dict` (in `dtype`, sharing its tensors where the dtype is the same)."""
    from accelerate import init_empty_weights

    config = AutoConfig.from_pretrained(run_dir / SKELETON)
    # parameters on the meta device (state_dict replaces them), buffers real: the rotary tables are computed,
    # not saved, and the model may run (the LoRA export's logits)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    missing, unexpected = model.load_state_dict(
        {k: v.to(DTYPES[dtype]) for k, v in state_dict.items()}, strict=False, assign=True
    )
    missing = [k for k in missing if k not in _tied(model)]
    if missing or unexpected:
        raise UserError(
            f"export: the checkpoint does not fit the model config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if _tied(model):
        model.tie_weights()
    model.eval()
    return model


def write_hf_folder(state_dict: dict[str, torch.Tensor], run_dir: Path, out: Path, dtype: str) -> None:
    """Save `state_dict` as an HF model with the run's config and tokenizer (rank 0 only)."""
    skeleton = run_dir / SKELETON
    model = model_from_state(state_dict, run_dir, dtype)
    tokenizer = AutoTokenizer.from_pretrained(skeleton)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def reload_logits(out: Path, batch: dict[str, torch.Tensor], dtype: str) -> torch.Tensor:
    return logits(AutoModelForCausalLM.from_pretrained(out, dtype=DTYPES[dtype]), batch)


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device  # a 4-bit base sits on its GPU
    with torch.no_grad():
        return (
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            .logits.float()
            .cpu()
        )


def export_lora(
    model,
    state_dict: dict[str, torch.Tensor],
    run_dir: Path,
    out: Path,
    cfg,
    batch: dict[str, torch.Tensor],
    reference: torch.Tensor,
) -> tuple[dict[str, float], dict[str, str] | None]:
    """A LoRA run's exports from its consolidated peft state dict (rank 0 only): out/adapter, loaded back with
    peft onto the run's base, and, if model.lora merges, out/final (base + B·A·alpha/r) reloaded with
    transformers; each one's logits checked against the engine's (`reference`). Returns the differences, and the
    sha256 of each base tensor as the engine holds it after training (for the provenance; None for a 4-bit base,
    which is reloaded from model.name_or_path, quantized as in training, to check the adapter)."""
    from alpaca_ds.common.provenance import tensor_sha256
    from alpaca_ds.train import lora
    from alpaca_ds.train.model import quantized_base

    dtype, adapter_dir = cfg.export_dtype, out / lora.ADAPTER
    lora.write_adapter(model, lora.adapter_state(model, state_dict), adapter_dir, DTYPES[dtype])
    AutoTokenizer.from_pretrained(run_dir / SKELETON).save_pretrained(adapter_dir)
    if cfg.model.lora.quantize != "none":
        base, base_sha256 = quantized_base(cfg.model, model.config.vocab_size), None
    else:
        base = lora.base_state(state_dict)
        base_sha256 = {name: tensor_sha256(t) for name, t in sorted(base.items())}  # before merging changes them
        base = model_from_state(base, run_dir, dtype)
    with_adapter = lora.load_with_adapter(base, adapter_dir)
    mask = batch["attention_mask"]
    diffs = {"adapter": check_logits(logits(with_adapter, batch), reference, mask, LORA_ULPS)}
    if cfg.model.lora.merge:
        write_hf_folder(with_adapter.merge_and_unload().state_dict(), run_dir, out / "final", dtype)
        diffs["merged"] = check_logits(reload_logits(out / "final", batch, dtype), reference, mask, LORA_ULPS)
    return diffs, base_sha256


# LoRA adds a second bf16 product to each targeted output, and the merged export rounds each W + B·A·alpha/r to
# bf16, a rounding the engine (W and B·A apart) never makes: the engine, the adapter reloaded with peft and the
# merged model each round differently, by a few more units than one model reloaded (tiny model: 1.4 units
# between bf16 and fp32 with lm_head targeted). A missing or wrong adapter moves logits by far more.
LORA_ULPS = 4


def check_logits(exported: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, ulps: int = 1) -> float:
    """Max |difference| over real tokens; raises unless within `ulps` x bf16 tolerance of the logits' scale."""
    keep = mask.bool()
    diff = float((exported[keep] - reference[keep]).abs().max())
    scale = float(reference[keep].abs().max())
    tolerance = ulps * 2**-7 * max(scale, 1.0)  # a few units in the last place of bf16
    if not diff <= tolerance:
        raise UserError(
            f"export verification failed: reloaded logits differ by {diff:.3g} "
            f"(tolerance {tolerance:.3g}); the exported folder is not the trained model"
        )
    return diff


def export_checkpoint(checkpoint: Path, out: Path, dtype: str | None = None) -> float:
    """`alpaca-ds export CKPT OUT`: consolidate a ZeRO checkpoint offline into an HF folder and verify it."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from alpaca_ds.config import load_config
    from alpaca_ds.train.config import TrainConfig

    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent.parent
    if not (checkpoint.is_dir() and (run_dir / SKELETON).is_dir() and (run_dir / "config.resolved.yaml").is_file()):
        raise UserError(
            f"{checkpoint}: not a checkpoint of an alpaca-ds run (expected "
            "RUN/checkpoints/step-NNNNNNNN with RUN/model and RUN/config.resolved.yaml)"
        )
    cfg = load_config(TrainConfig, run_dir / "config.resolved.yaml")
    dtype = dtype or cfg.export_dtype
    if cfg.model.lora is not None:
        return max(_export_lora_checkpoint(checkpoint, run_dir, out, cfg.model_copy(update={"export_dtype": dtype})))
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    write_hf_folder(state_dict, run_dir, out, dtype)
    # reference: the checkpoint's own weights in the export dtype, on a fixed batch of token ids
    config = AutoConfig.from_pretrained(run_dir / SKELETON)
    reference = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    reference.load_state_dict({k: v.to(DTYPES[dtype]) for k, v in state_dict.items()}, strict=False)
    reference.eval()
    batch = fixed_batch(config.vocab_size)
    with torch.no_grad():
        expected = reference(**batch).logits.float()
    return check_logits(reload_logits(out, batch, dtype), expected, batch["attention_mask"])


def _export_lora_checkpoint(checkpoint: Path, run_dir: Path, out: Path, cfg) -> list[float]:
    """A LoRA checkpoint holds the adapter only: the base is rebuilt as the run built it (model.name_or_path or the
    seeded random init, the added rows, the adapters), the checkpoint's fp32 adapter loaded into it, and exported
    as at the end of a run: OUT/adapter and (if model.lora merges) OUT/final."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from alpaca_ds.train.model import build_model

    if cfg.model.lora.quantize != "none":
        raise UserError(
            f"{checkpoint}: a QLoRA run exports at its end, on its GPU (the 4-bit base is rebuilt "
            "there); relaunch the same command to finish it"
        )
    adapter = get_fp32_state_dict_from_zero_checkpoint(
        str(checkpoint.parent), tag=checkpoint.name, exclude_frozen_parameters=True
    )
    vocab = AutoConfig.from_pretrained(run_dir / SKELETON).vocab_size
    model = build_model(cfg.model, {"train_micro_batch_size_per_gpu": 1}, vocab).to(DTYPES[cfg.export_dtype])
    missing = sorted({name for name, p in model.named_parameters() if p.requires_grad} - set(adapter))
    if missing:
        raise UserError(
            f"{checkpoint}: holds no {missing[0]!r} ({len(missing)} adapter tensors missing); is it a "
            "checkpoint of this run?"
        )
    model.load_state_dict(adapter, strict=False)
    batch = fixed_batch(vocab)
    diffs, _ = export_lora(model, model.state_dict(), run_dir, Path(out), cfg, batch, logits(model, batch))
    return list(diffs.values())


def fixed_batch(vocab_size: int, length: int = 32) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _tied(model) -> set[str]:
    return set(getattr(model, "_tied_weights_keys", None) or []) if model.config.tie_word_embeddings else set()

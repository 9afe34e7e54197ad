"""The model under ZeRO-3: loaded already partitioned (or a tiny random one), with Alpaca's added tokens, and
LoRA adapters when the recipe asks for them (lora.py)."""

from __future__ import annotations

import deepspeed
import torch

# Imported here, not inside zero.Init: the model classes pull in torch._dynamo lazily, which fails under the
# tensor-creation patches zero.Init installs.
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.integrations import HfDeepSpeedConfig

from alpaca_ds.common.errors import UserError
from alpaca_ds.train import lora
from alpaca_ds.train.config import ModelConfig


def build_model(cfg: ModelConfig, ds_config: dict, vocab_size: int) -> torch.nn.Module:
    """The model with `vocab_size` embedding rows (the dataset's tokenizer, added tokens included)."""
    # While this object lives, from_pretrained loads under deepspeed.zero.Init (no rank holds the full model) and
    # resize_token_embeddings gathers; once it is gone, transformers loads plainly again (the export's reload).
    hf_ds = HfDeepSpeedConfig(ds_config)  # noqa: F841
    if cfg.name_or_path is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                cfg.name_or_path,
                dtype=torch.bfloat16,
                attn_implementation=cfg.attn_implementation,
                **lora.load_kwargs(cfg, ds_config),
            )
        except OSError as e:
            raise UserError(f"model.name_or_path {cfg.name_or_path!r}: cannot load it ({e})") from None
    else:
        # Built whole on every rank (deepspeed.initialize partitions it): under zero.Init, transformers' own
        # initialisation would meet empty partitions and leave PyTorch's defaults (embeddings of std 1, not
        # initializer_range), and the same init_seed would give other weights under ZeRO-3 than under ZeRO-2.
        torch.manual_seed(cfg.init_seed)
        model = LlamaForCausalLM(LlamaConfig(**cfg.init_config, attn_implementation=cfg.attn_implementation))
    resize_with_mean_rows(model, vocab_size)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    return model if cfg.lora is None else lora.add_adapters(model, cfg)


def quantized_base(cfg: ModelConfig, vocab_size: int) -> torch.nn.Module:
    """The 4-bit base as training loaded it (same quantization, same added rows), on this rank's GPU."""
    model = AutoModelForCausalLM.from_pretrained(
        cfg.name_or_path,
        dtype=torch.bfloat16,
        attn_implementation=cfg.attn_implementation,
        quantization_config=lora.quantization_config(cfg),
        device_map={"": torch.cuda.current_device()},
    )
    resize_with_mean_rows(model, vocab_size)
    return model


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them."""
    # transformers 5 renamed gradient_checkpointing_enable (deprecated, to go in v6); earlier 5.x have only it
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.config.use_cache = False


def resize_with_mean_rows(model: torch.nn.Module, vocab_size: int) -> None:
    """Alpaca's smart_tokenizer_and_embedding_resize: new input and output rows = mean of the old rows."""
    embeddings = model.get_input_embeddings().weight
    old = embeddings.ds_shape[0] if hasattr(embeddings, "ds_shape") else embeddings.shape[0]  # ZeRO-3 partitioned
    if vocab_size < old:
        raise UserError(
            f"the dataset's tokenizer has {vocab_size} tokens but the model {old} embedding rows; "
            "is the dataset built with this model's tokenizer?"
        )
    if vocab_size == old:
        return
    # transformers builds the resized matrices whole, even under ZeRO-3 (deepspeed.initialize partitions them)
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    partitioned = any(hasattr(w, "ds_shape") for w in weights)
    with deepspeed.zero.GatheredParameters(weights, modifier_rank=0, enabled=partitioned):
        with torch.no_grad():
            for w in weights:
                w[old:] = w[:old].mean(dim=0, keepdim=True)

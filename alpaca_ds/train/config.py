"""The training recipe's configuration (`alpaca-ds train`, `launch`, `export`, `plan`): model (full or LoRA),
data, batch, optimizer, checkpoints and logging. Loaded by alpaca_ds.config.load_config; imports no torch."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from alpaca_ds.common.errors import UserError
from alpaca_ds.config import Schema


class LoraConfig(Schema):
    """Low-rank adapters (peft's LoRA) on a frozen base: only these, and modules_to_save, are trained."""

    r: int = Field(8, gt=0, description="rank of each adapter (B·A with A r x in, B out x r)")
    alpha: float = Field(16, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "v_proj"), min_length=1, description="Linear layers (name suffixes) that get an adapter"
    )
    modules_to_save: tuple[str, ...] = Field(
        (),
        description="modules trained in full and saved with the adapter, e.g. [embed_tokens, lm_head] to "
        "train the rows of added tokens",
    )
    quantize: Literal["none", "nf4"] = Field(
        "none", description="nf4: QLoRA, the frozen base in 4 bits (bitsandbytes; needs a CUDA GPU)"
    )
    merged_export: bool | None = Field(
        None,
        description="also write final/ (base + B·A·alpha/r merged, an HF folder) beside adapter/; null = yes "
        "for a bf16 base, no for a 4-bit one (it has no exact bf16 weights to merge into)",
    )

    @model_validator(mode="after")
    def _mergeable(self):
        if self.quantize != "none" and self.merged_export:
            raise ValueError(
                "model.lora.merged_export: a 4-bit (nf4) base has no exact bf16 weights to merge the "
                "adapter into; leave merged_export unset (the adapter is exported and checked on the "
                "4-bit base) and merge it onto the bf16 base afterwards"
            )
        return self

    @property
    def merge(self) -> bool:
        return self.quantize == "none" if self.merged_export is None else self.merged_export


class ModelConfig(Schema):
    name_or_path: str | None = Field(None, description="pretrained weights: a folder or hub id")
    init_config: dict[str, Any] | None = Field(None, description="random init from these LlamaConfig keys (tiny runs)")
    init_seed: int = Field(0, description="seed of the random init")
    tokenizer: str | None = Field(None, description="the model's tokenizer; defaults to name_or_path")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = Field(
        None, description="train low-rank adapters on a frozen base instead of every weight; null = full fine-tuning"
    )

    @model_validator(mode="after")
    def _one_source(self):
        if (self.name_or_path is None) == (self.init_config is None):
            raise ValueError("set exactly one of model.name_or_path (pretrained) and model.init_config (random init)")
        if self.tokenizer is None and self.name_or_path is None:
            raise ValueError("a randomly initialised model needs model.tokenizer")
        return self

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.name_or_path


class TrainDataConfig(Schema):
    path: str = Field(description="tokenized dataset directory (alpaca-ds data build)")
    batching: Literal["random", "length_grouped", "packed"] = Field(
        "random", description="random: pad to longest, as Alpaca; length_grouped; packed: several examples per row"
    )
    pack_length: int = Field(2048, gt=0, description="tokens per packed row")
    seed: int = Field(42, description="shuffling seed")
    train_on_prompt: bool = Field(
        False,
        description="compute the loss on the prompt tokens too (alpaca-lora's "
        "default); false masks them with -100, as Alpaca does",
    )


class BatchConfig(Schema):
    global_batch_size: int = Field(128, gt=0, description="examples (rows when packed) per optimizer step")
    micro_batch_size: int = Field(4, gt=0, description="per GPU per forward pass")
    gradient_accumulation_steps: int | None = Field(None, gt=0, description="derived from the world size when unset")

    def resolve(self, world_size: int) -> tuple[int, int]:
        """(micro, accumulation) with micro x accumulation x world == global, or a UserError with the arithmetic."""
        micro, glob = self.micro_batch_size, self.global_batch_size
        if self.gradient_accumulation_steps is not None:
            accum = self.gradient_accumulation_steps
            if micro * accum * world_size != glob:
                raise UserError(
                    f"batch: micro_batch_size {micro} x gradient_accumulation_steps {accum} x world "
                    f"{world_size} = {micro * accum * world_size}, not global_batch_size {glob}; unset "
                    "gradient_accumulation_steps to derive it from the world size"
                )
            return micro, accum
        if glob % (micro * world_size):
            fits = [m for m in range(1, glob + 1) if glob % (m * world_size) == 0]
            hint = (
                f"micro_batch_size values that work on {world_size} GPUs: {', '.join(map(str, fits[:8]))}"
                if fits
                else f"no micro-batch size works: {glob} is not divisible by {world_size} GPUs; "
                "change the GPU count or global_batch_size"
            )
            raise UserError(
                f"batch: global_batch_size {glob} / (micro_batch_size {micro} x world {world_size} = "
                f"{micro * world_size}) = {glob / (micro * world_size):g} is not a whole number of "
                f"accumulation steps; {hint}"
            )
        return micro, glob // (micro * world_size)


class OptimConfig(Schema):
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm; 0 disables clipping")
    epochs: int = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps with linear warmup")


class CheckpointConfig(Schema):
    every_steps: int = Field(500, gt=0)
    keep_last: int = Field(2, gt=0)


class LogConfig(Schema):
    every_steps: int = Field(1, gt=0, description="optimizer steps per metrics.jsonl line")
    eval_every_steps: int = Field(0, ge=0, description="validation loss interval; 0 = at the end only")
    peak_tflops: float = Field(312.0, gt=0, description="per-device peak for MFU (A100 bf16 dense: 312)")
    tensorboard: bool = False
    csv: bool = False
    wandb: bool = False


class TrainConfig(Schema):
    """`alpaca-ds train`: a recipe (launch/recipes/*.yaml) for fine-tuning with DeepSpeed."""

    output_dir: str
    ds_config: str = Field("ds_configs/zero3_bf16.yaml", description="DeepSpeed engine config (commented YAML)")
    seed: int = 42
    model: ModelConfig
    data: TrainDataConfig
    batch: BatchConfig = BatchConfig()
    optim: OptimConfig = OptimConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log: LogConfig = LogConfig()
    export_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"

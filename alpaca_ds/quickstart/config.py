"""The quickstart's configuration (`alpaca-ds quickstart`, launch/recipes/quickstart.yaml)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from alpaca_ds.config import Schema, _deep_merge


class QuickstartGenerateConfig(Schema):
    """The quickstart's generation step: self-instruct against the local teacher simulator."""

    seed_tasks: str = Field("seeds/seed_tasks.jsonl", description="seed tasks, self-instruct JSONL format")
    num_instructions: int = Field(300, gt=0, description="accepted instructions to generate")
    teacher_model: str = Field(
        "gpt-3.5-turbo-instruct",
        description="model name sent to the simulator; the "
        "cost table prices the simulator's token counts as this model's",
    )
    budget_usd: float = Field(0.5, gt=0, description="hard budget of the generation, at teacher_model's price")
    seed: int = Field(42, description="seed of the prompts (and of the simulator's answers)")
    concurrency: int = Field(8, ge=1, le=1000, description="requests in flight at once")


class QuickstartDataConfig(Schema):
    """The quickstart's dataset build."""

    tokenizer: str = Field(
        "data/tokenizer", description="tokenizer folder (the small SentencePiece model shipped in data/tokenizer)"
    )
    max_length: int = Field(512, gt=1, description="truncation length in tokens")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of records hashed into validation")


class QuickstartTrainConfig(Schema):
    """The quickstart's training run: a recipe's model, batch and optimizer on the generated data."""

    recipe: str = Field(
        "launch/recipes/tiny.yaml",
        description="training recipe (its model, batch, optim, "
        "checkpoint and log sections are used; data, output and tokenizer come from the quickstart)",
    )
    ds_config: str = Field("ds_configs/zero3_bf16.yaml", description="DeepSpeed engine config")
    ranks: int = Field(2, ge=1, description="CPU ranks started by the deepspeed launcher")
    epochs: int = Field(3, gt=0, description="passes over the generated data")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")


class QuickstartEvaluateConfig(Schema):
    """The quickstart's evaluation: answers to held-out tasks and a judged win rate against their reference."""

    eval_set: str = Field(
        "data/sample/alpaca_sample.json",
        description="Alpaca-format records never trained on "
        "in the quickstart; their `output` is the reference the model is judged against",
    )
    tasks: int = Field(20, gt=0, description="the first N records of eval_set are answered and judged")
    max_new_tokens: int = Field(128, gt=0, description="cap on an answer's length in tokens")
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature of the answers; 0 = greedy")
    judge_model: str = Field(
        "gpt-4o-mini",
        description="model name sent to the simulator's judge mode; the cost "
        "table prices its token counts as this model's",
    )
    judge_budget_usd: float = Field(0.05, gt=0, description="hard budget of the judging, at judge_model's price")


class QuickstartConfig(Schema):
    """`alpaca-ds quickstart`: the whole pipeline, offline, on CPU (launch/recipes/quickstart.yaml)."""

    out_dir: str = Field(
        "runs/quickstart",
        description="run directory: generated/, tokenized/, run/, export/, "
        "eval/, configs/ and report.md; rerunning with it continues where it stopped",
    )
    generate: QuickstartGenerateConfig = QuickstartGenerateConfig()
    data: QuickstartDataConfig = QuickstartDataConfig()
    train: QuickstartTrainConfig = QuickstartTrainConfig()
    evaluate: QuickstartEvaluateConfig = QuickstartEvaluateConfig()
    quick: dict[str, Any] = Field(
        default_factory=dict,
        description="`--quick`: keys (in the sections above) that "
        "replace the full run's, for a smaller variant such as CI's",
    )

    @model_validator(mode="after")
    def _quick_valid(self):
        if self.quick:
            self.with_quick()  # a bad key under `quick` fails at load, not after the first steps have run
        return self

    def with_quick(self) -> QuickstartConfig:
        """This config with the `quick` section's values applied (and `quick` itself emptied)."""
        data = _deep_merge(self.model_dump(mode="json", exclude={"quick"}), self.quick)
        try:
            return QuickstartConfig.model_validate(data)
        except ValidationError as e:
            problems = "; ".join(f"quick.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ValueError(problems) from None

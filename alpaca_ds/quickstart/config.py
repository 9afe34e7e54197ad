"""The quickstart's configuration (`alpaca-ds quickstart`, launch/recipes/quickstart.yaml).

Each step's section holds overrides of that stage's own config, the schema its command reads with `--config`
(generate: GenerateConfig, data: DataBuildConfig, train: the recipe's TrainConfig, answer: AnswerConfig,
judge: JudgeConfig). The quickstart sets the keys that tie the steps together (RUN_OWNED: folders, the local
simulator's URL, the tokenizer the data was built with); a section that sets one is refused at load.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from alpaca_ds.common.io import read_yaml_mapping
from alpaca_ds.config import Schema, SectionError, merge
from alpaca_ds.dataset.config import DataBuildConfig
from alpaca_ds.evaluate.config import AnswerConfig, JudgeConfig
from alpaca_ds.generate.config import GenerateConfig
from alpaca_ds.train.config import TrainConfig

STAGES: dict[str, type[Schema]] = {
    "generate": GenerateConfig,
    "data": DataBuildConfig,
    "train": TrainConfig,
    "answer": AnswerConfig,
    "judge": JudgeConfig,
}
# the keys the quickstart sets in each step's config, and what it sets them to
RUN_OWNED: dict[str, dict[str, str]] = {
    "generate": {"out_dir": "RUN/generated", "api.base_url": "the local simulator", "api.api_key_env": "none"},
    "data": {"input": "RUN/generated/regen.json", "output": "RUN/tokenized"},
    "train": {"output_dir": "RUN/run", "data.path": "RUN/tokenized", "model.tokenizer": "data.tokenizer"},
    "answer": {"model": "RUN/export", "output": "RUN/eval/<generator>/", "generator": "quickstart-tiny"},
    "judge": {
        "a": "the eval set's own outputs",
        "b": "the model's answers",
        "out_dir": "RUN/eval/judge",
        "api.base_url": "the local simulator",
        "api.api_key_env": "none",
    },
}


def _section(description: str):
    return Field(default_factory=dict, description=description)


class QuickstartConfig(Schema):
    """`alpaca-ds quickstart`: the whole pipeline, offline, on CPU (launch/recipes/quickstart.yaml)."""

    out_dir: str = Field(
        "runs/quickstart",
        description="run directory: generated/, tokenized/, run/, export/, eval/, configs/ and report.md; "
        "rerunning with it continues where it stopped",
    )
    ranks: int = Field(2, ge=1, description="CPU ranks the deepspeed launcher starts for training")
    recipe: str = Field("launch/recipes/tiny.yaml", description="the training recipe; `train` overrides it")
    generate: dict[str, Any] = _section("overrides of `alpaca-ds generate`'s config (GenerateConfig)")
    data: dict[str, Any] = _section("overrides of `alpaca-ds data build`'s config (DataBuildConfig)")
    train: dict[str, Any] = _section("overrides of the recipe (TrainConfig)")
    answer: dict[str, Any] = _section("overrides of `alpaca-ds evaluate answer`'s config (AnswerConfig)")
    judge: dict[str, Any] = _section("overrides of `alpaca-ds evaluate judge`'s config (JudgeConfig)")
    quick: dict[str, Any] = Field(
        default_factory=dict,
        description="`--quick`: keys (in the sections above) that replace the full run's, for a smaller variant "
        "such as CI's",
    )

    @model_validator(mode="after")
    def _valid(self):
        # a bad key fails at load, not after the first steps have run
        owned = [f"{name}.{key}" for name in STAGES for key in _keys(getattr(self, name)) if key in RUN_OWNED[name]]
        if owned:
            raise ValueError(
                f"{', '.join(owned)}: set by the quickstart itself, to tie its steps together; remove "
                f"{'them' if len(owned) > 1 else 'it'} (the stage configs it writes to RUN/configs/ show the values)"
            )
        self.stage_configs()
        if self.quick:
            self.with_quick()
        return self

    def stage_configs(self, owned: dict[str, dict] | None = None) -> dict[str, Schema]:
        """Each step's config: its section over the stage's defaults (train: over the recipe), then the keys the
        quickstart owns (`owned`, by step; None fills them with placeholders, to check the sections at load)."""
        configs: dict[str, Schema] = {}
        for name, schema in STAGES.items():
            base = read_yaml_mapping(self.recipe, "training recipe") if name == "train" else {}
            data = merge(base, getattr(self, name), owned[name] if owned is not None else _placeholders(name))
            if name == "train":  # the model reads the tokenizer the data was built with
                data = merge(data, {"model": {"tokenizer": configs["data"].tokenizer}})
            try:
                configs[name] = schema.model_validate(data)
            except ValidationError as e:
                raise SectionError(name, schema, e) from None
        return configs

    def with_quick(self) -> QuickstartConfig:
        """This config with the `quick` section's values applied (and `quick` itself emptied)."""
        data = merge(self.model_dump(mode="json", exclude={"quick"}), self.quick)
        try:
            return QuickstartConfig.model_validate(data)
        except ValidationError as e:  # explained as quick.<key>, with the valid keys there
            raise SectionError("quick", QuickstartConfig, e) from None


def _keys(section: dict, prefix: str = "") -> list[str]:
    """The dotted keys a section sets, sections included (`api` and `api.base_url`)."""
    keys = []
    for key, value in section.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += _keys(value, f"{prefix}{key}.")
    return keys


def _placeholders(name: str) -> dict:
    """The run-owned keys of a step, each set to the description of its value (the tokenizer is derived)."""
    tree: dict = {}
    for key, what in RUN_OWNED[name].items():
        *sections, last = key.split(".")
        if key != "model.tokenizer":
            node = tree
            for part in sections:
                node = node.setdefault(part, {})
            node[last] = what
    return tree

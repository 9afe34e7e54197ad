"""Fixtures shared across test files: tokenized datasets built from the shipped sample, and the saved tiny LLaMA
every engine of the training tests starts from. Plain helpers are in the `helpers` package (tests/helpers/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.data import build_dataset
from helpers.training import FROM_INIT_STEPS


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "ds"
    build_dataset(out)
    return out


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """The training tests' data: the sample with a 10% validation split."""
    out = tmp_path_factory.mktemp("train-data") / "ds"
    build_dataset(out, "val_fraction=0.1")
    return out


@pytest.fixture(scope="session")
def from_init(dataset, tmp_path_factory) -> tuple[str, ...]:
    """The recipe settings that train a saved tiny LLaMA for FROM_INIT_STEPS steps: every engine starts from
    these weights, loaded the way each loads a pretrained model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    manifest = json.loads((dataset / "manifest.json").read_text())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=manifest["tokenizer"]["vocab_size"],
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # bf16-representable weights: every engine's fp32 masters start bit-identical
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    init = tmp_path_factory.mktemp("init") / "model"
    model.save_pretrained(init)
    return (
        f"data.path={dataset}",
        f"model.name_or_path={init}",
        "model.init_config=null",
        f"optim.max_steps={FROM_INIT_STEPS}",
        "log.eval_every_steps=0",
        "checkpoint.every_steps=1000",
    )

"""Building a tokenized dataset the way the tests do: the offline defaults (the shipped sample and tokenizer)."""

from __future__ import annotations

from pathlib import Path

from alpaca_ds.config import load_config
from alpaca_ds.dataset import build
from alpaca_ds.dataset.config import DataBuildConfig


def build_dataset(output: Path, *overrides: str) -> dict:
    """Build with the offline defaults (the shipped sample and tokenizer) plus `overrides`; returns the manifest."""
    cfg = load_config(
        DataBuildConfig,
        None,
        [f"output={output}", "workers=2", "val_fraction=0", *overrides],
        defaults=build.default_config(),
    )
    return build.run(cfg).manifest

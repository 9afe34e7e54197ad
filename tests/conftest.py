"""Shared test fixtures: paths to the project's sample data and to the real public data beside the project."""
from __future__ import annotations

from pathlib import Path

import pytest

from alpaca_ds.config import load_config
from alpaca_ds.dataset.config import DataBuildConfig
from alpaca_ds.dataset import build

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LLAMA_TOKENIZER = SHARED / "tokenizers" / "llama"
ALPACA_DATA = SHARED / "alpaca" / "alpaca_data.json"

needs_shared = pytest.mark.skipif(
    not (LLAMA_TOKENIZER / "tokenizer.model").is_file() or not ALPACA_DATA.is_file(),
    reason="the real Alpaca data and LLaMA tokenizer are not at ../shared/data (they are never committed)")


def build_dataset(output: Path, *overrides: str) -> dict:
    """Build with the offline defaults (the shipped sample and tokenizer) plus `overrides`; returns the manifest."""
    cfg = load_config(DataBuildConfig, None, [f"output={output}", "workers=2", "val_fraction=0", *overrides],
                      defaults=build.default_config())
    return build.run(cfg)


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "ds"
    build_dataset(out)
    return out

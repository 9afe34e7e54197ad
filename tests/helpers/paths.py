"""Where things are: the repository, the real public data beside it (../shared/data, never committed), and the
skip markers for tests that need that data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
LLAMA_TOKENIZER = SHARED / "tokenizers" / "llama"
ALPACA_DATA = SHARED / "alpaca" / "alpaca_data.json"
SELFINSTRUCT = SHARED / "self-instruct" / "user_oriented_instructions.jsonl"
DAVINCI = SHARED / "alpaca_eval" / "text_davinci_003_outputs.json"
ALPACA_7B = SHARED / "alpaca_eval" / "alpaca-7b_outputs.json"

needs_shared = pytest.mark.skipif(
    not (LLAMA_TOKENIZER / "tokenizer.model").is_file() or not ALPACA_DATA.is_file(),
    reason="the real Alpaca data and LLaMA tokenizer are not at ../shared/data (they are never committed)",
)

needs_eval_data = pytest.mark.skipif(
    not (SELFINSTRUCT.is_file() and DAVINCI.is_file() and ALPACA_7B.is_file()),
    reason=f"the public eval sets are not at {SHARED} (self-instruct/user_oriented_instructions.jsonl, "
    "alpaca_eval/*_outputs.json; they are never committed)",
)

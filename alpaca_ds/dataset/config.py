"""The dataset stage's configuration (`alpaca-ds data build`), loaded by alpaca_ds.config.load_config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alpaca_ds.config import Schema


class DataBuildConfig(Schema):
    """`alpaca-ds data build`: Alpaca-format records -> tokenized, loss-masked, memory-mapped shards."""

    input: str = Field(description="Alpaca-format JSON list or JSONL: a local path or an http(s) URL")
    sha256: str | None = Field(None, description="expected sha256 of the input; required for a URL")
    output: str = Field(description="dataset directory; manifest.json is written there last")
    tokenizer: str = Field(description="tokenizer folder or hub id (the model's tokenizer)")
    max_length: int = Field(512, gt=1, description="truncation length in tokens, as Alpaca's model_max_length")
    overlength: Literal["truncate", "drop"] = Field(
        "truncate", description="truncate as Alpaca does, or drop examples longer than max_length"
    )
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of records hashed into validation")
    split_seed: int = Field(0, description="seed of the content hash that assigns records to splits")
    shard_size: int = Field(100_000, gt=0, description="examples per shard file")
    batch_size: int = Field(2_048, gt=0, description="records per tokenization task sent to a worker")
    workers: int = Field(0, ge=0, description="tokenizer worker processes; 0 = one per CPU core")
    skip_invalid: bool = Field(False, description="skip (and count) invalid records instead of failing")
    download_dir: str = Field("~/.cache/alpaca-ds/downloads", description="where URL inputs are cached")

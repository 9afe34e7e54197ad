"""Self-instruct generation's configuration (`alpaca-ds generate`), loaded by alpaca_ds.config.load_config."""

from __future__ import annotations

from pydantic import Field

from alpaca_ds.api.config import ApiConfig, BudgetConfig
from alpaca_ds.config import Schema


class FilterConfig(Schema):
    """Alpaca's filters on generated instructions (each rejection is counted by reason in stats.json)."""

    min_words: int = Field(4, ge=0, description="fewer words are rejected (Alpaca: more than 3)")
    max_words: int = Field(150, gt=0, description="more words are rejected (Alpaca: 150)")
    # fmt: off
    blacklist: tuple[str, ...] = Field(
        ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw", "plot",
         "go to", "video", "audio", "music", "flowchart", "diagram"),
        description="whole words (case-insensitive) a text-only model cannot serve",
    )
    # fmt: on
    banned_prefixes: tuple[str, ...] = Field(("Write a program",), description="instructions starting so are dropped")
    reject_punctuation_start: bool = Field(True, description="drop instructions whose first character is punctuation")
    reject_non_ascii_start: bool = Field(True, description="drop instructions whose first character is not ASCII")


class GenerateConfig(Schema):
    """`alpaca-ds generate`: self-instruct data from a teacher model (launch/recipes/self_instruct_*.yaml)."""

    out_dir: str = Field(description="run directory; rerunning with the same one continues where it stopped")
    num_instructions: int = Field(gt=0, description="accepted instructions to produce (Alpaca: 52,002)")
    seed: int = Field(42, description="request i's in-context examples come from an RNG seeded with (seed, i)")
    concurrency: int = Field(8, ge=1, le=1000, description="requests in flight at once")
    rouge_threshold: float = Field(
        0.7, ge=0, le=1, description="reject when ROUGE-L F vs any kept instruction exceeds it"
    )
    seed_tasks: str = Field("seeds/seed_tasks.jsonl", description="seed tasks, self-instruct JSONL format")
    prompt_template: str | None = Field(None, description="prompt text file; null = alpaca_ds/generate/prompt.txt")
    num_prompt_instructions: int = Field(3, ge=1, le=10, description="in-context seed examples per prompt (Alpaca: 3)")
    num_tasks: int = Field(20, ge=2, le=99, description="list length asked for; generation stops at that number")
    max_requests: int | None = Field(None, gt=0, description="stop after this many requests in total (trials)")
    expected_accept_rate: float = Field(
        0.25,
        gt=0,
        le=1,
        description="--dry-run's prior share of generated candidates that are kept, until a run "
        "in out_dir has measured one",
    )
    progress: bool = Field(True, description="show a progress bar on stderr")
    api: ApiConfig = ApiConfig()
    budget: BudgetConfig
    filters: FilterConfig = FilterConfig()

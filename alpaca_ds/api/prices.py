"""Prices per model (an editable YAML table), online and through the Batch API, and the dollar cost of tokens.

The Batch API bills the same tokens at its own price: half the online one at OpenAI, which is the default when
the table (or the config) gives no batch price for a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from alpaca_ds.api.config import BudgetConfig
from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import read_yaml_mapping

BATCH_DISCOUNT = 0.5  # OpenAI's Batch API: 50% of the online price


@dataclass(frozen=True)
class Price:
    prompt_usd_per_1m: float
    completion_usd_per_1m: float
    source: str
    batch_prompt_usd_per_1m: float | None = None  # None: BATCH_DISCOUNT x the online price
    batch_completion_usd_per_1m: float | None = None

    def batch(self) -> Price:
        """The price of the same model through the Batch API."""
        bp = self.batch_prompt_usd_per_1m
        bc = self.batch_completion_usd_per_1m
        return Price(
            self.prompt_usd_per_1m * BATCH_DISCOUNT if bp is None else bp,
            self.completion_usd_per_1m * BATCH_DISCOUNT if bc is None else bc,
            f"{self.source}, batch" + (f" ({BATCH_DISCOUNT:.0%} of online)" if bp is None else ""),
        )

    def for_transport(self, transport: str) -> Price:
        return self.batch() if transport == "batch" else self

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_usd_per_1m + completion_tokens * self.completion_usd_per_1m) / 1e6


def default_table_path() -> Path:
    return Path(str(resources.files("alpaca_ds.api") / "prices.yaml"))


def load_table(path: str | Path | None) -> dict[str, dict[str, float]]:
    path = Path(path) if path else default_table_path()
    data = read_yaml_mapping(path, "the price table (budget.prices)")
    if not data:
        raise UserError(f"{path}: the price table must map model names to {{prompt: $, completion: $}} per 1M tokens")
    table = {}
    for model, entry in data.items():
        ok = (
            isinstance(entry, dict)
            and {"prompt", "completion"} <= set(entry) <= set(_KEYS)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in entry.values())
            and ("batch_prompt" in entry) == ("batch_completion" in entry)
        )
        if not ok:
            raise UserError(
                f"{path}: {model}: expected {{prompt: <$ per 1M>, completion: <$ per 1M>}} and "
                f"optionally both batch_prompt and batch_completion, got {entry!r}"
            )
        table[str(model)] = {k: float(v) for k, v in entry.items()}
    return table


_KEYS = ("prompt", "completion", "batch_prompt", "batch_completion")


def price_for(model: str, budget: BudgetConfig) -> Price:
    """The config's explicit price, else the table's; an unknown model is refused before any request."""
    if budget.prompt_usd_per_1m is not None and budget.completion_usd_per_1m is not None:
        return Price(budget.prompt_usd_per_1m, budget.completion_usd_per_1m, "config (budget.*_usd_per_1m)")
    table_path = budget.prices or default_table_path()
    table = load_table(table_path)
    if model not in table:
        raise UserError(
            f"no price for model {model!r} in {table_path}: set budget.prompt_usd_per_1m and "
            "budget.completion_usd_per_1m (dollars per 1M tokens), or add the model to the price "
            "table (budget.prices). The budget cannot be enforced without a price."
        )
    e = table[model]
    return Price(e["prompt"], e["completion"], str(table_path), e.get("batch_prompt"), e.get("batch_completion"))

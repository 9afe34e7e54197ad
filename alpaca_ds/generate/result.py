"""What `alpaca-ds generate` returns: how the run ended, what it accepted, and its summary line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerateResult:
    stop_reason: str | None
    message: str  # why it stopped ("" when there is nothing to say)
    accepted: int
    target: int
    out_dir: str
    stats: dict  # stats.json's content
    cost: dict  # cost.json's content
    max_usd: float  # the budget
    exit_code: int  # 0 target (or max_requests) reached, 3 budget, 4 failures, 5 key/model refused, 130 interrupted

    def summary(self) -> str:
        requests = self.stats["requests"]
        return (
            f"{self.accepted}/{self.target} instructions in {self.out_dir} (regen.json, accepted.jsonl); "
            f"{requests['succeeded']} requests, {requests['retries']} retries, {requests['failed']} failed; "
            f"spent ${self.cost['spent_usd']:.4f} of ${self.max_usd:g}"
        )

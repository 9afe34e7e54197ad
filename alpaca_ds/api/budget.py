"""A hard budget in dollars and tokens: reserve a request's worst case before sending it, settle on usage.

Invariant: spent + reserved <= limit at every moment, and an attempt's actual charge never exceeds its
reservation (the reservation is prompt tokens + max_tokens x completions, the most the API can bill), so spend
can never pass the limit, whatever the concurrency. A request the remaining budget cannot cover waits until
in-flight requests settle (they usually cost less than reserved); when nothing is in flight and it still does
not fit, the budget is exhausted.

Retries come first: while a retry of a request already sent waits for room (`reserve_wait(priority=True)`), no
new request gets any, so a budget that runs out leaves as few requests half done (sent, unanswered) as it can.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    usd: float
    tokens: int


class Budget:
    def __init__(self, max_usd: float, max_tokens: int | None, spent: Cost = Cost(0.0, 0)):
        self.max_usd = max_usd
        self.max_tokens = max_tokens
        self.spent_usd = spent.usd
        self.spent_tokens = spent.tokens
        self.reserved_usd = 0.0
        self.reserved_tokens = 0
        self.outstanding = 0
        self.priority_waiting = 0
        self._changed: asyncio.Condition | None = None

    def fits(self, cost: Cost) -> bool:
        if self.spent_usd + self.reserved_usd + cost.usd > self.max_usd:
            return False
        if self.max_tokens is not None and self.spent_tokens + self.reserved_tokens + cost.tokens > self.max_tokens:
            return False
        return True

    def reserve(self, cost: Cost, priority: bool = False) -> Cost | None:
        """Reserve `cost` now if it fits (returns it, to be settled), else None. Without `priority` (a new
        request) nothing is reserved while a retry waits for room."""
        if not self.fits(cost) or (self.priority_waiting and not priority):
            return None
        self.reserved_usd += cost.usd
        self.reserved_tokens += cost.tokens
        self.outstanding += 1
        return cost

    def hold(self, cost: Cost) -> Cost:
        """Reserve `cost` whether it fits or not: a batch already submitted in an earlier run (it fitted then)."""
        self.reserved_usd += cost.usd
        self.reserved_tokens += cost.tokens
        self.outstanding += 1
        return cost

    def settle(self, reservation: Cost, charge: Cost) -> None:
        """Release `reservation` and add the actual `charge` (Cost(0, 0) for an attempt that was not billed)."""
        self.reserved_usd = max(0.0, self.reserved_usd - reservation.usd)
        self.reserved_tokens = max(0, self.reserved_tokens - reservation.tokens)
        self.outstanding -= 1
        if self.outstanding == 0:  # clear float residue of many add/subtract pairs
            self.reserved_usd, self.reserved_tokens = 0.0, 0
        self.spent_usd += charge.usd
        self.spent_tokens += charge.tokens
        self._notify()

    async def reserve_wait(self, cost: Cost, priority: bool = False) -> Cost | None:
        """Reserve `cost`, waiting while in-flight requests may still free room; None when it can never fit.
        `priority`: a retry, served before any new request."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        self.priority_waiting += priority
        try:
            async with self._changed:
                while True:
                    got = self.reserve(cost, priority)
                    if got is not None:
                        return got
                    if self.outstanding == 0 and (priority or not self.priority_waiting):
                        return None
                    await self._changed.wait()
        finally:
            self.priority_waiting -= priority
            if priority:
                self._notify()

    def _notify(self) -> None:
        cond = self._changed
        if cond is None:
            return

        async def wake():
            async with cond:
                cond.notify_all()

        try:
            asyncio.get_running_loop().create_task(wake())
        except RuntimeError:
            pass

    @property
    def remaining_usd(self) -> float:
        return self.max_usd - self.spent_usd - self.reserved_usd

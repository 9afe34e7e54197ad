"""Client-side rate limits: requests per minute and tokens per minute, as aiolimiter's leaky buckets.

Each bucket holds 10 seconds' worth (or one request's worth, if that is more) and drains at limit/60 per
second, so a run starts with a small burst and then paces itself instead of sending a whole minute's quota at
once. Tokens are counted as the API's rate limiter counts them: the prompt plus max_tokens x n.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter

BURST_SECONDS = 10.0


def _bucket(per_minute: float) -> AsyncLimiter | None:
    if per_minute <= 0:
        return None
    capacity = max(1.0, per_minute / 60.0 * BURST_SECONDS)
    return AsyncLimiter(capacity, capacity / (per_minute / 60.0))


class RateLimiter:
    def __init__(self, requests_per_minute: float = 0, tokens_per_minute: float = 0):
        self._requests = _bucket(requests_per_minute)
        self._tokens = _bucket(tokens_per_minute)
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None

    async def acquire(self, tokens: int) -> None:
        async with self._lock:  # first come, first served: a big request is not starved by small ones
            if self._requests is not None:
                await self._requests.acquire()
            if self._tokens is not None:  # a request bigger than the bucket waits for a full bucket
                await self._tokens.acquire(min(float(tokens), self._tokens.max_rate))

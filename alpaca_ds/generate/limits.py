"""Client-side rate limits: requests per minute and tokens per minute, as token buckets.

Each bucket refills continuously at limit/60 per second and holds at most 10 seconds' worth (or one request's
worth, if that is more), so a run starts with a small burst and then paces itself instead of sending a whole
minute's quota at once. Tokens are counted as the API's rate limiter counts them: the prompt plus max_tokens x n.
"""
from __future__ import annotations

import asyncio
import time

BURST_SECONDS = 10.0


class _Bucket:
    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * BURST_SECONDS)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, amount: float, now: float) -> float:
        self._refill(now)
        need = min(amount, self.capacity)  # a request bigger than the bucket waits for a full bucket
        return 0.0 if self.level >= need else (need - self.level) / self.rate


class RateLimiter:
    def __init__(self, requests_per_minute: float = 0, tokens_per_minute: float = 0):
        self._requests = _Bucket(requests_per_minute) if requests_per_minute > 0 else None
        self._tokens = _Bucket(tokens_per_minute) if tokens_per_minute > 0 else None
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None

    async def acquire(self, tokens: int) -> None:
        if self._requests is None and self._tokens is None:
            return
        async with self._lock:  # first come, first served: a big request is not starved by small ones
            while True:
                now = time.monotonic()
                waits = [b.wait_time(a, now) for b, a in ((self._requests, 1), (self._tokens, tokens)) if b]
                delay = max(waits)
                if delay <= 0:
                    if self._requests:
                        self._requests.level -= 1
                    if self._tokens:
                        self._tokens.level -= min(tokens, self._tokens.capacity)
                    return
                await asyncio.sleep(delay)

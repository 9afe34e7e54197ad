"""One request to an OpenAI-compatible API, retried, within a hard budget, every attempt in a ledger file.

`generate` and `evaluate` both send their online requests through `Caller.call`. An attempt:

    reserve its worst case (budget.py) -> the rate limiter (limits.py) -> a `send` line, fsync'd
    -> one call (client.py) -> a `result` line (usage at the price; the worst case when it may have been billed
    without usage), settled against the budget; returns once that line is on disk

and between attempts an exponential backoff with jitter, never sooner than the server's Retry-After. The lines
are the call ledger's (api/ledger.py). A retry waits for its budget ahead of new requests (Budget.reserve_wait),
so a run that runs out of money leaves as few unanswered requests as it can.
Every wait ends early when the run stops (`stop_event`). Only cancelling the task (a second interrupt) abandons
an attempt, and it is then recorded at once: charged its worst case if it was on the wire, nothing if not yet.
What an ending means for the run (stop it, give the request up, ...) is the caller's to decide.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from alpaca_ds.api.budget import Budget, Cost
from alpaca_ds.api.client import ApiClient, Outcome
from alpaca_ds.api.config import ApiConfig
from alpaca_ds.api.ledger import CallLedger, interrupted_result
from alpaca_ds.api.limits import RateLimiter
from alpaca_ds.api.prices import Price

NOTHING = Cost(0.0, 0)


def backoff_delay(api: ApiConfig, attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retrying after failed attempt number `attempt`."""
    delay = min(api.backoff_max_s, api.backoff_initial_s * 2 ** (attempt - 1))
    delay *= rng.uniform(0.5, 1.0)  # "equal jitter": spread retries out without going near zero
    if retry_after is not None:
        delay = max(delay, retry_after * rng.uniform(1.0, 1.1))
    return delay


class Caller:
    """Sends requests through one client, rate limiter, budget and ledger.

    `on_send()` runs when an attempt leaves, `on_answer()` when its answer is settled (before it is on disk).
    """

    def __init__(
        self,
        api: ApiConfig,
        key: str | None,
        ledger: CallLedger,
        budget: Budget,
        price: Price | None,
        stop_event: asyncio.Event,
        say: Callable[[str], None],
        on_send: Callable[[], None] | None = None,
        on_answer: Callable[[], None] | None = None,
    ):
        self.api = api
        self.client = ApiClient(api, key)
        self.limiter = RateLimiter(api.requests_per_minute, api.tokens_per_minute)
        self.field = ledger.field
        self.ledger = ledger
        self.journal = ledger.journal
        self.budget = budget
        self.price = price
        self.stop_event = stop_event
        self.say = say
        self.on_send = on_send
        self.on_answer = on_answer
        self.settling = 0  # answered attempts whose result line is being written
        self.jitter = random.Random()  # timing only: never touches what is generated

    async def close(self) -> None:
        await self.client.close()

    async def call(
        self,
        key,
        prompts: list[str],
        worst: Cost,
        *,
        stop: list[str] | None,
        logit_bias: dict[str, int] | None = None,
        reservation: Cost | None = None,
        label: str = "a call",
    ) -> tuple[str, Outcome | None]:
        """(how it ended, the last attempt's outcome). How: "ok"; "fatal" (the API refused, as no later call can
        succeed); "failed" (not retryable, or out of retries); "budget" (its worst case can never fit: nothing is
        in flight to free room); "stopped" (the run stopped first).

        `reservation`: `worst`, already reserved by the caller for the first attempt. `label` names the request
        in the warning about an answer billed beyond its reservation."""
        outcome = None
        while True:
            if reservation is None:
                if self.stop_event.is_set():
                    return "stopped", outcome
                # a retry (an earlier attempt was sent) is served before new requests
                waiter = asyncio.get_running_loop().create_task(
                    self.budget.reserve_wait(worst, priority=outcome is not None or key in self.ledger.attempts)
                )
                if not await self._unless_stopped(waiter, cancel=False):
                    waiter.cancel()
                    got = (await asyncio.gather(waiter, return_exceptions=True))[0]
                    if isinstance(got, Cost):  # it got its reservation just as the run stopped
                        self.budget.settle(got, NOTHING)
                    return "stopped", outcome
                reservation = waiter.result()
                if reservation is None:
                    return "budget", outcome
            if self.stop_event.is_set() or (
                self.limiter.active and not await self._unless_stopped(self.limiter.acquire(worst.tokens))
            ):
                self.budget.settle(reservation, NOTHING)
                return "stopped", outcome
            attempt = self.ledger.attempts.get(key, 0) + 1
            self.ledger.attempts[key] = attempt
            try:  # the intent to spend is on disk before the request leaves
                await self.journal.commit(
                    {"t": "send", self.field: key, "a": attempt, "usd": reservation.usd, "tok": reservation.tokens}
                )
            except asyncio.CancelledError:
                self._record_now(key, attempt, reservation, "abandoned before it was sent", NOTHING, "none")
                raise
            if self.on_send is not None:
                self.on_send()
            try:
                outcome = await self.client.call(prompts, stop=stop, logit_bias=logit_bias)
            except asyncio.CancelledError:  # it may still be billed
                self._record_now(key, attempt, reservation, "abandoned in flight", reservation, "worst_case")
                raise
            self.settling += 1  # off the wire: its slot may take the next request while this one is logged
            try:
                await self._record(key, attempt, reservation, outcome, label)
            finally:
                self.settling -= 1
            if outcome.ok:
                return "ok", outcome
            if outcome.fatal:
                return "fatal", outcome
            if not outcome.retryable or self.ledger.failed_attempts(key) > self.api.max_retries:
                return "failed", outcome
            if not await self._unless_stopped(
                asyncio.sleep(backoff_delay(self.api, attempt, outcome.retry_after, self.jitter))
            ):
                return "stopped", outcome
            reservation = None

    async def _unless_stopped(self, aw, cancel: bool = True) -> bool:
        """Await `aw` unless the run stops first (then it is cancelled, when `cancel`); True if it finished."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.get_running_loop().create_task(self.stop_event.wait())
        try:
            done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stopper.cancel()
        if task in done:
            task.result()
            return True
        if cancel:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return False

    async def _record(self, key, attempt: int, reservation: Cost, outcome: Outcome, label: str) -> None:
        """Log an attempt's result and settle its reservation; return once the line is on disk, so nothing
        derived from it (processing, accepted records, answers) can exist without it."""
        durable = self.journal.enqueue(self.result_entry(key, attempt, reservation, outcome, label))
        if self.on_answer is not None:
            self.on_answer()
        await asyncio.shield(durable)

    def result_entry(self, key, attempt: int, reservation: Cost, outcome: Outcome, label: str) -> dict:
        """The result line of an answered attempt (online, or a batch line), added to the ledger's replay and
        settled against the budget: its usage at the price; the worst case when it may have been billed without
        usage; nothing when it was not billed. Writing it is the caller's."""
        if outcome.usage is not None:
            p, c = outcome.usage
            charge, how = Cost(self.price.cost(p, c) if self.price is not None else 0.0, p + c), "usage"
            if charge.usd > reservation.usd + 1e-12 or charge.tokens > reservation.tokens:
                self.say(
                    f"warning: {label} was billed {charge.tokens} tokens, more than the {reservation.tokens} "
                    "reserved (does the server honour max_tokens?)"
                )
        elif outcome.maybe_billed:
            charge, how = reservation, "worst_case"
        else:
            charge, how = NOTHING, "none"
        entry = {
            "t": "result",
            self.field: key,
            "a": attempt,
            "kind": outcome.kind,
            "http": outcome.http,
            "usage": list(outcome.usage) if outcome.usage else None,
            "charged": how,
            "usd": charge.usd,
            "tok": charge.tokens,
        }
        if outcome.ok:
            entry["choices"] = outcome.choices
        else:
            entry["error"] = outcome.error
        self.ledger.add_result(entry)
        self.budget.settle(reservation, charge)
        return entry

    def _record_now(self, key, attempt: int, reservation: Cost, why: str, charge: Cost, how: str) -> None:
        entry = interrupted_result(self.field, key, attempt, charge, how, why)
        self.journal.append(entry)
        self.ledger.add_result(entry)
        self.budget.settle(reservation, charge)

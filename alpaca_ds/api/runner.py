"""One run against an OpenAI-compatible API: its ledger, hard budget, caller, how it stops and what it reports.

`generate` drives its own in-order scheduler on top of a Runner; `evaluate` (answers, judge) sends keyed requests
through `Runner.map`. Either way the Runner owns:

  * the budget, rebuilt from the ledger (so it holds over every run in the same directory) and priced for the
    transport (the Batch API bills less);
  * the stop: the first reason wins (budget, failures, fatal, interrupted, ...), and is the exit status
    (EXIT_CODES); the first Ctrl-C (or SIGTERM) lets requests in flight finish, a second abandons them (they are
    then charged their worst case);
  * the cost report (cost.json).

A keyed request (`request`) is answered from the ledger when it already holds the answer: the ledger is also a
cache, keyed by what a request asks (model, decoding, prompts).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from collections.abc import Callable

from alpaca_ds.api.budget import Budget, Cost
from alpaca_ds.api.calls import Caller
from alpaca_ds.api.config import ApiConfig, BudgetConfig
from alpaca_ds.api.ledger import CallLedger
from alpaca_ds.api.progress import Progress
from alpaca_ds.api.tokens import prompt_tokens
from alpaca_ds.common.errors import UserError

# how a run ended -> the command's exit status
EXIT_CODES = {
    None: 0,
    "target": 0,
    "max_requests": 0,
    "cancelled": 0,
    "budget": 3,
    "failures": 4,
    "fatal": 5,
    "interrupted": 130,
}
INTERRUPTED = "interrupted; rerun the same command to continue (answered requests are kept, not paid again)"


def exit_code(reason: str | None) -> int:
    return EXIT_CODES.get(reason, 1)


def request_key(api: ApiConfig, prompts: list[str], stop: list[str] | None) -> str:
    what = {
        "model": api.model,
        "mode": api.mode,
        "max_tokens": api.max_tokens,
        "temperature": api.temperature,
        "top_p": api.top_p,
        "n": api.n,
        "stop": stop,
        "prompts": prompts,
    }
    if api.logprobs is not None:  # only then: the keys of ledgers written before stay valid
        what["logprobs"] = api.logprobs
    return hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


class Runner:
    """`async with Runner(...) as r:` installs the signal handlers and opens the caller."""

    def __init__(
        self,
        api: ApiConfig,
        key: str | None,
        ledger: CallLedger,
        budget: BudgetConfig | None,
        *,
        price=None,
        enc=None,
        progress: Progress | None = None,
        on_stop: Callable[[], None] | None = None,
        on_abandon: Callable[[], None] | None = None,
        on_send: Callable[[], None] | None = None,
        on_answer: Callable[[], None] | None = None,
    ):
        self.api = api
        self.key = key
        self.ledger = ledger
        self.budget_cfg = budget
        self.progress = progress or Progress(None, "", "", enabled=False)
        self.transport = transport = getattr(api, "transport", "online")  # an endpoint's config has none
        if price is None and budget is not None:
            from alpaca_ds.api.prices import price_for

            price = price_for(api.model, budget)
        self.price = price.for_transport(transport) if price is not None else None
        if enc is None and (budget is not None or api.tokens_per_minute):
            from alpaca_ds.api.tokens import get_encoding

            enc = get_encoding(api.model, api.encoding)
        self.enc = enc
        self.budget = Budget(
            budget.max_usd if budget is not None else float("inf"),
            budget.max_tokens if budget is not None else None,
            ledger.spent,
        )
        self.stop_reason: str | None = None
        self.message = ""
        self.stop_event: asyncio.Event | None = None
        self.caller: Caller | None = None
        self.calls = 0  # attempts sent by this run (online), or batch lines submitted
        self.cached = 0  # requests served from the ledger
        self.given_up = 0  # requests that failed all their retries in this run
        self.last_failure = ""
        self._on_stop, self._on_abandon = on_stop, on_abandon
        self._on_send, self._on_answer = on_send, on_answer
        self._interrupts = 0
        self._signals = False

    def say(self, message: str) -> None:
        self.progress.say(message)

    # ---- lifecycle ----------------------------------------------------------------------------------------------

    async def __aenter__(self):
        if self.transport == "online" and self.ledger.open_batches():
            # sending their requests online too would pay for them twice
            raise UserError(
                f"{self.ledger.path}: {self.ledger.open_batches()} batches of an earlier run with "
                "api.transport: batch may still be answered; rerun with api.transport: batch to collect "
                "them (or add --cancel-batches to cancel them), then continue online if you like"
            )
        self.stop_event = asyncio.Event()
        if self.stop_reason is not None:
            self.stop_event.set()
        self.caller = Caller(
            self.api,
            self.key,
            self.ledger,
            self.budget,
            self.price,
            self.stop_event,
            say=self.say,
            on_send=self._sent,
            on_answer=self._on_answer,
        )
        loop = asyncio.get_running_loop()
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal)
            self._signals = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            self._signals = False
        return self

    async def __aexit__(self, *exc):
        if self._signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        await self.ledger.journal.drain()
        await self.caller.close()

    def _sent(self) -> None:
        self.calls += 1
        if self._on_send is not None:
            self._on_send()

    def _on_signal(self) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            self.stop("interrupted", INTERRUPTED)
            self.say(
                "stopping: the batches already submitted keep running at the API"
                if self.transport == "batch"
                else "stopping: waiting for the requests in flight (interrupt again to abandon them; they are "
                "then charged at their worst case)"
            )
        elif self._on_abandon is not None:
            self._on_abandon()
        else:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task() and getattr(task, "_alpaca_call", False):
                    task.cancel()

    def run(self, main) -> None:
        """asyncio.run(main), the progress line closed however it ends."""
        try:
            asyncio.run(main)
        finally:
            self.progress.close()

    def stop(self, reason: str, message: str) -> None:
        """Stop sending: requests waiting (rate limit, backoff, budget) give up, those on the wire finish."""
        if self.stop_reason is None:
            self.stop_reason, self.message = reason, message
        if self.stop_event is not None:
            self.stop_event.set()
        if self._on_stop is not None:
            self._on_stop()

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    @property
    def exit_code(self) -> int:
        return exit_code(self.stop_reason)

    # ---- costs --------------------------------------------------------------------------------------------------

    def prompt_tokens(self, prompts: list[str]) -> int:
        return prompt_tokens(self.enc, prompts, self.api.mode) if self.enc is not None else 0

    def worst_case(self, prompts: list[str], prompt_tokens: int | None = None) -> Cost:
        """The most a request can be billed: its prompt tokens + max_tokens for each completion, priced."""
        completion = self.api.max_tokens * self.api.n * len(prompts)
        prompt = self.prompt_tokens(prompts) if prompt_tokens is None else prompt_tokens
        usd = self.price.cost(prompt, completion) if self.price is not None else 0.0
        return Cost(usd, prompt + completion)

    def budget_message(self, worst: Cost) -> str:
        b, c = self.budget, self.budget_cfg
        what = f"${b.spent_usd:.4f} of budget.max_usd ${c.max_usd:g}"
        if c.max_tokens is not None:
            what += f" and {b.spent_tokens:,} of budget.max_tokens {c.max_tokens:,}"
        return (
            f"budget exhausted: spent {what}; the next request could cost up to ${worst.usd:.4f} / "
            f"{worst.tokens:,} tokens. Raise the budget and rerun the same command to continue: answered "
            "requests are not paid again."
        )

    def cost_report(self) -> dict:
        led, c = self.ledger, self.budget_cfg
        p = self.price
        return {
            "model": self.api.model,
            "base_url": self.api.base_url,
            "transport": self.transport,
            "prices_usd_per_1m": (
                {"prompt": p.prompt_usd_per_1m, "completion": p.completion_usd_per_1m, "source": p.source}
                if p is not None
                else None
            ),
            "spent_usd": self.budget.spent_usd,
            "spent_tokens": self.budget.spent_tokens,
            "prompt_tokens": led.prompt_tokens,
            "completion_tokens": led.completion_tokens,
            "charged_worst_case_usd": led.charged_worst_case_usd,
            "budget": {"max_usd": c.max_usd, "max_tokens": c.max_tokens} if c is not None else None,
        }

    # ---- requests -----------------------------------------------------------------------------------------------

    async def call(self, key, prompts: list[str], worst: Cost, **options):
        """Caller.call (its keyword options as they are), with the run stopped when the API refuses (fatal) or the
        budget can never fit."""
        how, outcome = await self.caller.call(key, prompts, worst, **{"label": "a request", **options})
        if how == "fatal":
            self.stop(
                "fatal",
                f"the API refused the request ({outcome.kind}, HTTP {outcome.http}): "
                f"{outcome.error}. Check api.base_url, api.model and the key in ${self.api.api_key_env}.",
            )
        elif how == "budget":
            self.stop("budget", self.budget_message(worst))
        return how, outcome

    def answered(self, prompts: list[str], stop: list[str] | None = None) -> list[dict] | None:
        """The ledger's answer to `prompts`, without asking the API (None: not answered yet)."""
        return self.ledger.ok.get(request_key(self.api, prompts, stop))

    async def request(
        self, prompts: list[str], stop: list[str] | None = None, give_up: bool = False
    ) -> list[dict] | None:
        """The choices for `prompts` (from the ledger when it holds them), or None when it got none.

        A request that fails all its retries stops the run ("failures"), or with `give_up` is recorded as given
        up (a rerun tries it again) while the run goes on; the run then ends as "failures" (see `map`)."""
        key = request_key(self.api, prompts, stop)
        if key in self.ledger.ok:
            self.cached += 1
            return self.ledger.ok[key]
        task = asyncio.current_task()
        if task is not None:
            task._alpaca_call = True  # cancellable by a second interrupt
        how, outcome = await self.call(key, prompts, self.worst_case(prompts), stop=stop)
        if how == "ok":
            return outcome.choices
        if how == "failed":
            what = f"{outcome.kind}: {outcome.error}"
            if give_up:
                await self.give_up(key, outcome.kind, outcome.error)
                self.last_failure = what
            else:
                self.stop(
                    "failures",
                    f"a request failed {self.ledger.attempts[key]} times (last: {what}); is the "
                    "API healthy? Rerun the same command to continue.",
                )
        return None

    async def give_up(self, key, kind: str, error: str | None) -> None:
        """Record that request `key` failed all its retries."""
        await self.ledger.journal.commit(
            {"t": "gave_up", self.ledger.field: key, "a": self.ledger.attempts[key], "kind": kind, "error": error}
        )
        self.ledger.gave_up.add(key)
        self.given_up += 1

    def end_failures(self) -> None:
        """After the requests are done: the run ends as "failures" when some gave up."""
        if self.given_up and not self.stopping:
            self.stop(
                "failures",
                f"{self.given_up} requests failed all their retries (last: {self.last_failure}); "
                "their results are missing. Rerun the same command to try them again.",
            )

    async def map(
        self, jobs: list, prompts_of: Callable, on_answer: Callable, concurrency: int, give_up: bool = False
    ) -> None:
        """Send every job's request, `concurrency` at a time, until done or stopped; `on_answer(job, choices)`
        for each answer, in any order. A second Ctrl-C cancels the workers: not an error."""
        queue: asyncio.Queue = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)

        async def worker():
            while not queue.empty() and not self.stopping:
                job = queue.get_nowait()
                choices = await self.request(prompts_of(job), give_up=give_up)
                if choices is not None:
                    on_answer(job, choices)

        done = await asyncio.gather(*(worker() for _ in range(concurrency)), return_exceptions=True)
        for d in done:
            if isinstance(d, BaseException) and not isinstance(d, asyncio.CancelledError):
                raise d
        self.end_failures()

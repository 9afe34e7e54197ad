"""Calls to an OpenAI-compatible API for evaluation, on the generator's machinery: its retrying caller
(generate/calls.py: client, rate limiter, budget that reserves the worst case and settles on usage, journal).

What this adds is a call ledger that is also a cache, keyed by what a request asks (model, decoding, prompts):

    {"t": "send",   "k": KEY, "a": 1, "usd": <worst case>, "tok": <worst case>}          fsync'd before sending
    {"t": "result", "k": KEY, "a": 1, "kind": "ok", "usage": [p, c], "charged": "usage", "usd": ..., "tok": ...,
     "choices": [{"prompt": 0, "index": 0, "text": ..., "finish_reason": ...}]}          fsync'd on arrival

A rerun replays it: answered keys are served from it (no call), spend is summed (a `send` without its `result`
was in flight when the process died and is charged its worst case, since the API may have billed it), so a
budget holds over all runs that share the ledger. The API key stays in the client object; nothing here writes
a request's headers.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from pathlib import Path

from alpaca_ds.config import ApiConfig, BudgetConfig
from alpaca_ds.generate.budget import Budget, Cost
from alpaca_ds.generate.calls import Caller, replay_attempts
from alpaca_ds.generate.client import prompt_tokens
from alpaca_ds.generate.journal import Journal, read_jsonl


class Stopped(Exception):
    """The run stops: budget exhausted, a fatal API answer (key, model), or an interrupt."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def request_key(api: ApiConfig, prompts: list[str], stop: list[str] | None) -> str:
    what = {"model": api.model, "mode": api.mode, "max_tokens": api.max_tokens, "temperature": api.temperature,
            "top_p": api.top_p, "n": api.n, "stop": stop, "prompts": prompts}
    return hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


class CallLedger:
    def __init__(self, path: Path):
        self.path = path
        entries, good = read_jsonl(path)
        self.cache: dict[str, list[dict]] = {}
        self.attempts: dict[str, int] = {}
        self.spent = Cost(0.0, 0)
        self.prompt_tokens = self.completion_tokens = 0
        self.charged_worst_case_usd = 0.0
        self.interrupted = 0
        orphans = replay_attempts(entries, "k", self, "the process stopped while this call was in flight; the API "
                                                      "may have billed it")
        self.interrupted = len(orphans)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(path, good)
        self.journal.append_many(orphans)

    def add_result(self, r: dict) -> None:
        self.spent = Cost(self.spent.usd + r["usd"], self.spent.tokens + r["tok"])
        if r["charged"] == "usage" and r.get("usage"):
            self.prompt_tokens += r["usage"][0]
            self.completion_tokens += r["usage"][1]
        elif r["charged"] == "worst_case":
            self.charged_worst_case_usd += r["usd"]
        if r["kind"] == "ok" and r["k"] not in self.cache:
            self.cache[r["k"]] = r["choices"]

    def failed_attempts(self, key: str) -> int:
        """What api.max_retries counts here: every attempt made for `key`, in any run."""
        return self.attempts.get(key, 0)

    def close(self) -> None:
        self.journal.close()


class ApiRunner:
    """Send requests with retries, rate limits and a hard budget; every attempt goes through the ledger."""

    def __init__(self, api: ApiConfig, key: str | None, ledger: CallLedger, budget: BudgetConfig | None,
                 say=print):
        self.api = api
        self.key = key
        self.ledger = ledger
        self.budget_cfg = budget
        self.say = say
        self.price = None
        self.enc = None
        if budget is not None:
            from alpaca_ds.generate.prices import price_for
            from alpaca_ds.generate.tokens import get_encoding
            self.price = price_for(api.model, budget)
            self.enc = get_encoding(api.model, api.encoding)
        elif api.tokens_per_minute:
            from alpaca_ds.generate.tokens import get_encoding
            self.enc = get_encoding(api.model, api.encoding)
        limit = budget.max_usd if budget is not None else float("inf")
        self.budget = Budget(limit, budget.max_tokens if budget is not None else None, ledger.spent)
        self.caller: Caller | None = None
        self.stopping: Stopped | None = None
        self.calls = 0            # attempts sent by this run
        self.cached = 0           # requests served from the ledger
        self._stop_event: asyncio.Event | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------------------

    async def __aenter__(self):
        self._stop_event = asyncio.Event()
        self.caller = Caller(self.api, self.key, "k", self.ledger, self.ledger.journal, self.budget, self.price,
                             self._stop_event, say=self.say, on_send=self._sent)
        loop = asyncio.get_running_loop()
        self._interrupts = 0
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

    def _on_signal(self) -> None:
        self._interrupts += 1
        self.stop("interrupted", "interrupted; rerun the same command to continue (answered calls are kept)")
        if self._interrupts == 1:
            self.say("stopping: waiting for the calls in flight (interrupt again to abandon them; they are then "
                     "charged at their worst case)")
        else:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task() and getattr(task, "_alpaca_call", False):
                    task.cancel()

    def stop(self, reason: str, message: str) -> None:
        if self.stopping is None:
            self.stopping = Stopped(reason, message)
        if self._stop_event is not None:
            self._stop_event.set()

    # ---- costs --------------------------------------------------------------------------------------------------

    def worst_case(self, prompts: list[str]) -> Cost:
        completion = self.api.max_tokens * self.api.n * len(prompts)
        if self.enc is None:
            return Cost(0.0, completion)
        prompt = prompt_tokens(self.enc, prompts, self.api.mode)
        usd = self.price.cost(prompt, completion) if self.price is not None else 0.0
        return Cost(usd, prompt + completion)

    def budget_message(self, worst: Cost) -> str:
        b, c = self.budget, self.budget_cfg
        return (f"budget exhausted: spent ${b.spent_usd:.4f} of budget.max_usd ${c.max_usd:g}; the next call could "
                f"cost up to ${worst.usd:.4f}. Raise budget.max_usd and rerun the same command: calls already "
                "answered are not paid again.")

    # ---- one request ----------------------------------------------------------------------------------------------

    async def request(self, prompts: list[str], stop: list[str] | None = None) -> list[dict] | None:
        """The choices for `prompts` (from the ledger when it holds them), or None when the run stops first.

        Raises nothing for API trouble: a request that fails all retries stops the run (`self.stopping`)."""
        key = request_key(self.api, prompts, stop)
        if key in self.ledger.cache:
            self.cached += 1
            return self.ledger.cache[key]
        task = asyncio.current_task()
        if task is not None:
            task._alpaca_call = True  # cancellable by a second interrupt
        worst = self.worst_case(prompts)
        how, outcome = await self.caller.call(key, prompts, worst, stop=stop)
        if how == "ok":
            return outcome.choices
        if how == "fatal":
            self.stop("fatal", f"the API refused the call ({outcome.kind}, HTTP {outcome.http}): {outcome.error}. "
                      "Check api.base_url, api.model and the API key.")
        elif how == "failed":
            self.stop("failures", f"a call failed {self.ledger.attempts[key]} times (last: {outcome.kind}: "
                      f"{outcome.error}); is the API healthy? Rerun the same command to continue.")
        elif how == "budget":
            self.stop("budget", self.budget_message(worst))
        return None

    def cost_report(self) -> dict:
        led = self.ledger
        return {
            "model": self.api.model, "base_url": self.api.base_url,
            "prices_usd_per_1m": ({"prompt": self.price.prompt_usd_per_1m,
                                   "completion": self.price.completion_usd_per_1m,
                                   "source": self.price.source} if self.price is not None else None),
            "spent_usd": self.budget.spent_usd, "spent_tokens": self.budget.spent_tokens,
            "prompt_tokens": led.prompt_tokens, "completion_tokens": led.completion_tokens,
            "charged_worst_case_usd": led.charged_worst_case_usd,
            "budget": ({"max_usd": self.budget_cfg.max_usd, "max_tokens": self.budget_cfg.max_tokens}
                       if self.budget_cfg is not None else None),
            "this_run": {"calls": self.calls, "from_ledger": self.cached},
        }

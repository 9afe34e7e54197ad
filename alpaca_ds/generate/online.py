"""The online transport of `alpaca-ds generate`: up to `concurrency` requests in flight, answers processed in
request order as they arrive, by a thread of their own (backlog.py) that the request loop never waits for.

  * Request i's prompts are a pure function of (seed, i). Completions may arrive in any order; they are
    processed (parsed, filtered, de-duplicated) strictly in request order, so the same teacher answers give the
    same dataset at any concurrency, and the run stops at exactly `num_instructions`.
  * Each attempt goes through the API layer (api/calls.py): its worst case is reserved against the budget, a
    `send` line is fsync'd before it leaves and its `result` line before anything is derived from it.
  * Gaps first: a request below the highest one sent that has no answer yet (a retry, or one a stop left
    unanswered) is sent before any new one, and retries get the budget before new requests.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import time

from alpaca_ds.api.budget import Cost
from alpaca_ds.generate.backlog import Backlog
from alpaca_ds.generate.dryrun import expected_per_request
from alpaca_ds.generate.result import GenerateResult
from alpaca_ds.generate.rundir import RunDir


class OnlineGenerator:
    def __init__(self, rd: RunDir):
        self.rd = rd
        self.s = rd.s
        self.cfg = rd.cfg
        self.proc = rd.proc
        self.ledger = rd.ledger
        self.completed_this_run = 0
        self.attempts_this_run = 0
        self.consecutive_failures = 0
        self._abandon = False
        self._first_send: float | None = None
        self._last_answer: float | None = None
        self._last_status = self._last_files = 0.0
        # answered requests not processed yet (the replay stopped at a gap before them), and what is left to send
        led, start = self.ledger, rd.next_to_process
        # answers more than two rounds of requests ahead of processing are read back from the ledger when needed
        self.backlog = Backlog(rd, 2 * self.cfg.concurrency, on_processed=self._processed, on_done=self._stop_at_target)
        for i in range(start, rd.max_index + 1):
            if led.complete(i):
                self.backlog.put(i, led.ok.get(i))
        self.unsent = [i for i in range(start, rd.max_index + 1) if not led.complete(i)]
        heapq.heapify(self.unsent)
        self.next_new = rd.max_index + 1
        led.ok = dict.fromkeys(led.ok)  # their choices are processed or in the backlog
        led.keep_choices = False
        self.tasks: dict[int, asyncio.Task] = {}
        self.specs: dict[int, tuple[list[str], Cost]] = {}
        self.runner = rd.runner(
            "generate",
            on_stop=self._wake_up,
            on_abandon=self._abandon_all,
            on_send=self._sent,
            on_answer=self._answered,
        )
        self.progress = self.runner.progress

    # ---- scheduling -------------------------------------------------------------------------------------------

    def _peek_index(self) -> int | None:
        i = self.unsent[0] if self.unsent else self.next_new
        if self.cfg.max_requests is not None and i >= self.cfg.max_requests:
            return None
        return i

    def _take_index(self, i: int) -> None:
        if self.unsent and self.unsent[0] == i:
            heapq.heappop(self.unsent)
        else:
            self.next_new += 1

    def _need_more(self) -> bool:
        """Whether another request is worth sending, counting what is in flight or waiting to be processed."""
        need = self.cfg.num_instructions - len(self.proc.accepted)
        if need <= 0:
            return False
        if self.unsent:  # a gap below completed requests: nothing after it can be processed until it is answered
            return True
        pending = len(self.tasks) + self.backlog.lag
        if self.proc.processed_requests == 0:  # no yield measured yet: the dry run's prior
            per_request = expected_per_request(self.cfg, self.s.prompts_per_request)
        else:
            per_request = len(self.proc.accepted) / self.proc.processed_requests
        return pending * per_request < need

    def _spec(self, i: int) -> tuple[list[str], Cost]:
        if i not in self.specs:
            prompts = self.s.prompts(i)
            self.specs[i] = (prompts, self.s.worst_case(self.s.prompt_tokens(prompts), len(prompts)))
        return self.specs[i]

    def _launch(self) -> None:
        runner = self.runner
        while (
            not runner.stopping
            and len(self.tasks) - runner.caller.settling < self.cfg.concurrency
            and self._need_more()
        ):
            i = self._peek_index()
            if i is None:
                break
            _, worst = self._spec(i)
            # a request that was sent before (a gap) waits for its budget ahead of new ones, in its task
            reservation = None if i in self.ledger.attempts else runner.budget.reserve(worst)
            if reservation is None and i not in self.ledger.attempts:
                if runner.budget.outstanding == 0 and not runner.budget.priority_waiting:
                    runner.stop("budget", runner.budget_message(worst))
                break
            self._take_index(i)
            task = asyncio.get_running_loop().create_task(self._request(i, reservation))
            task.add_done_callback(lambda _t: self._wake.set())
            self.tasks[i] = task

    async def _request(self, i: int, reservation: Cost | None) -> tuple[str, list[dict] | None]:
        """('ok', choices) | ('failed', None) when it gave up | ('incomplete', None) when stopped before an answer."""
        prompts, worst = self._spec(i)
        api = self.cfg.api
        how, outcome = await self.runner.call(
            i,
            prompts,
            worst,
            stop=self.s.stop,
            logit_bias=self.s.logit_bias,
            reservation=reservation,
            label=f"request {i}",
        )
        if how == "ok":
            self.consecutive_failures = 0
            return "ok", outcome.choices
        if how == "failed":
            await self.ledger.journal.commit(
                {"t": "gave_up", "i": i, "a": self.ledger.attempts[i], "kind": outcome.kind, "error": outcome.error}
            )
            self.ledger.gave_up.add(i)
            self.consecutive_failures += 1
            if self.consecutive_failures >= api.max_consecutive_failures:
                self.runner.stop(
                    "failures",
                    f"{self.consecutive_failures} requests in a row failed all retries "
                    f"(last: {outcome.kind}: {outcome.error}); is the API healthy?",
                )
            return "failed", None
        return "incomplete", None

    def _sent(self) -> None:
        self.attempts_this_run += 1
        if self._first_send is None:
            self._first_send = time.monotonic()

    def _answered(self) -> None:
        self._last_answer = time.monotonic()
        self._wake.set()

    def _wake_up(self) -> None:
        if hasattr(self, "_wake"):
            self._wake.set()

    def _abandon_all(self) -> None:
        self._abandon = True
        self._wake.set()

    # ---- the loop -----------------------------------------------------------------------------------------------

    def _collect(self) -> None:
        for i, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[i]
                self.specs.pop(i, None)
                status, choices = ("incomplete", None) if task.cancelled() else task.result()
                if status == "incomplete":
                    heapq.heappush(self.unsent, i)
                else:
                    self.backlog.put(i, choices)
                    self.completed_this_run += 1

    def _processed(self, new: int) -> None:
        """The processing thread moved on (on the loop): `new` records were accepted."""
        self.progress.update(new)
        self._wake.set()

    def _stop_at_target(self) -> None:
        self.runner.stop("target", f"reached num_instructions = {self.cfg.num_instructions}")

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        async with self.runner:
            self.backlog.start(asyncio.get_running_loop())
            if self.proc.done:  # a finished run, rerun: replaying the ledger reached the target
                self._stop_at_target()
            try:
                await self._loop()
            finally:
                self.backlog.stop(final=False)  # stops at once when _loop has not already let it finish
                await self.backlog.join()

    async def _loop(self) -> None:
        runner = self.runner
        while True:
            self._collect()
            self._launch()
            self._status()
            self.backlog.check()  # an exception in processing is a bug: surface it
            if not self.tasks:
                backlog = self.backlog.busy or self.rd.next_to_process in self.backlog
                if not runner.stopping and not backlog:
                    if self._peek_index() is not None:
                        raise RuntimeError("generate: nothing in flight and nothing sent (scheduler bug)")
                    runner.stop("max_requests", f"sent max_requests = {self.cfg.max_requests} requests")
                if runner.stopping:
                    break
            if self._abandon:
                for t in self.tasks.values():
                    t.cancel()
                await asyncio.gather(*self.tasks.values(), return_exceptions=True)
                self.tasks.clear()
                break
            try:
                await asyncio.wait_for(self._wake.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
        self._collect()
        self.backlog.stop(final=not self._abandon)  # process what is next in order, then stop
        await self.backlog.join()

    # ---- reporting ----------------------------------------------------------------------------------------------

    def _this_run(self) -> dict:
        window = (self._last_answer - self._first_send) if self._first_send and self._last_answer else 0.0
        return {
            "requests_completed": self.completed_this_run,
            "attempts": self.attempts_this_run,
            # from the first request sent to the last answer received (startup excluded)
            "request_seconds": round(window, 3),
            "requests_per_s": round(self.completed_this_run / window, 3) if window > 0 else None,
            "concurrency": self.cfg.concurrency,
            "max_processing_lag": self.backlog.max_lag,
        }

    def _status(self) -> None:
        now = time.monotonic()
        if now - self._last_status < 0.5:
            return
        self._last_status = now
        rate = self.completed_this_run / max(now - (self._first_send or now), 1e-9)
        self.progress.update(
            0,
            f"{rate:.1f} req/s, {self.backlog.lag} answers to process, "
            f"${self.runner.budget.spent_usd:.4f} of ${self.cfg.budget.max_usd:g}",
        )
        # not while the processor is in the middle of a request (the loop does not wait for it): next turn then
        if now - self._last_files > 5.0 and self.rd.write_reports(
            self.runner, self._this_run(), final=False, wait=False
        ):
            self._last_files = now
            # Everything alive now (accepted records, the ROUGE index, the ledger) lives until the end: move it out
            # of the cyclic GC's reach, whose full passes over a growing heap otherwise stall the event loop.
            gc.freeze()

    def run(self) -> GenerateResult:
        self.runner.run(self._main())
        return self.rd.conclude(self.runner, self.backlog, self._this_run())

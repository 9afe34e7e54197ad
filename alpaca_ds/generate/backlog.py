"""The online transport's processing side: answers received but not processed yet, processed strictly in request
order by a thread of their own, so the event loop never waits for them.

When answers arrive faster than they can be processed (a fast teacher whose candidates are mostly accepted: every
accepted one makes the next ROUGE-L query dearer), processing falls behind and the loop goes on sending. Memory
stays bounded: the choices of an answer more than `window` requests ahead of the next one to process are not
kept; it is read back from the ledger, which holds every answer on disk before it is handed here, when
processing reaches it. `lag` (answers received, not yet processed) is what the progress line shows.

The thread writes the records it accepts to accepted.jsonl itself (one fsync per run of requests it processed
in a row), so neither the JSON encoding nor the fsync of accepted records runs on the event loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from alpaca_ds.generate.rundir import RunDir

SPILLED = object()  # an answer whose choices are left in the ledger
MAX_RUN = 32  # requests processed before their records are written (and the loop is told)


class LedgerAnswers:
    """Reads answers back from the ledger file: the first `ok` result line of a request holds its choices."""

    def __init__(self, path, field: str):
        self.path, self.field = path, field
        self.pos = 0  # the ledger is scanned once, front to back, as far as needed
        self.offsets: dict[int, int] = {}  # request -> offset of its first ok result line, found by the scan

    def choices(self, i: int) -> list[dict]:
        with open(self.path, "rb") as f:
            if i not in self.offsets:
                self._scan(f, i)
            f.seek(self.offsets[i])
            return json.loads(f.readline())["choices"]

    def _scan(self, f, want: int) -> None:
        f.seek(self.pos)
        while want not in self.offsets:
            line = f.readline()
            if not line.endswith(b"\n"):  # the answer is on disk before it is handed over: this cannot happen
                raise RuntimeError(f"generate: request {want}'s answer is not in {self.path}")
            if line.startswith(b'{"t":"result"'):
                e = json.loads(line)
                if e["kind"] == "ok":
                    self.offsets.setdefault(e[self.field], self.pos)
            self.pos += len(line)


class Backlog:
    """`put` answers (on the loop); a thread processes them in request order while `next_to_process` has one.

    `on_processed(new_records)` and `on_done()` (target reached) are called on the loop's thread."""

    def __init__(self, rd: RunDir, window: int, on_processed: Callable[[int], None], on_done: Callable[[], None]):
        self.rd, self.proc = rd, rd.proc
        self.window = window
        self.on_processed, self.on_done = on_processed, on_done
        self.ledger = LedgerAnswers(rd.ledger.path, rd.ledger.field)
        self.answers: dict[int, object] = {}  # request -> choices, None (it failed all retries) or SPILLED
        self.busy = False  # the thread is processing (answers it took are not in `answers`)
        self.max_lag = 0
        self._cond = threading.Condition()
        self._final = self._abandon = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def __contains__(self, i: int) -> bool:
        return i in self.answers

    def __getitem__(self, i: int) -> list[dict] | None:
        """Request i's choices (None: it failed all retries), read back from the ledger if not kept."""
        choices = self.answers[i]
        return self.ledger.choices(i) if choices is SPILLED else choices

    @property
    def lag(self) -> int:
        """Answers received but not yet processed."""
        return len(self.answers)

    def put(self, i: int, choices: list[dict] | None) -> None:
        keep = choices is None or i - self.rd.next_to_process < self.window
        with self._cond:
            self.answers[i] = choices if keep else SPILLED
            self.max_lag = max(self.max_lag, len(self.answers))
            self._cond.notify()

    def start(self, loop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="generate-process", daemon=True)
        self._thread.start()

    def _next(self) -> int | None:
        """The next request to process, once it is here; None when told to stop."""
        with self._cond:
            while True:
                i = self.rd.next_to_process
                if self._abandon or self.proc.done or (self._final and i not in self.answers):
                    self.busy = False
                    return None
                self.busy = i in self.answers
                if self.busy:
                    return i
                self._cond.wait()

    def _run(self) -> None:
        call = self._loop.call_soon_threadsafe
        try:
            while (i := self._next()) is not None:
                records, n = [], 0
                while True:  # the requests that are next in order, up to MAX_RUN: their records in one write
                    records += self.proc.process(i, self[i])
                    n += 1
                    with self._cond:
                        del self.answers[i]
                        i += 1
                        if n == MAX_RUN or i not in self.answers or self.proc.done or self._abandon:
                            break
                self.rd.accept(records, n)
                call(self.on_processed, len(records))
            if self.proc.done:
                call(self.on_done)
        except BaseException as e:  # a bug: `check` raises it on the loop
            self.error = e
            call(self.on_processed, 0)

    def stop(self, final: bool) -> None:
        """final: process every answer that is next in order, then end; else end after the current request."""
        with self._cond:
            if final:
                self._final = True
            else:
                self._abandon = True
            self._cond.notify()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    async def join(self) -> None:
        if self._thread is not None:
            await self._loop.run_in_executor(None, self._thread.join)
        self.check()

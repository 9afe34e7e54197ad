"""The Batch API transport (api.transport: batch): the same requests as online, answered within 24 h at the
batch price, through the official client's files.create(purpose="batch"), batches.create / retrieve / cancel /
list and files.content.

A part is one input file (at most api.batch.max_requests_per_file lines and max_file_mb; line `custom_id` = the
request's key, `url` = /v1/completions or /v1/chat/completions, `body` = what would be sent online) and the batch
that answers it. Each step is in the call ledger (fsync'd) before the next one is taken:

    {"t": "upload", "n": PART, FIELD+"s": [...], "a": [attempt...], "worst": [[usd, tok]...]}   before the upload
    {"t": "file",   "n": PART, "file": FILE_ID}                                                  before the create
    {"t": "batch",  "n": PART, "batch": BATCH_ID}                                                 before polling
    {"t": "result", FIELD: KEY, "a": ..., "batch": BATCH_ID, ...}     one per line, settled by the output's usage
    {"t": "batch_end", "n": PART, "status": ...}                      once every line is settled

so a process killed at any moment resumes its parts instead of sending their requests again: an upload without
its file is uploaded again (no batch can exist for it); a file without its batch is looked for among the
server's batches (batches.list) before one is created; a batch is polled; a finished batch is downloaded again
and only its unsettled lines are settled. A part's worst case stays reserved against the budget until its lines
settle, over restarts too. Lines that failed or expired, and the requests of a batch that failed or expired
whole, are returned for a later wave, each at most api.max_retries times, then given up.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from alpaca_ds.api.batch_wire import BatchWire
from alpaca_ds.api.budget import Cost

TERMINAL = ("completed", "expired", "failed", "cancelled")


@dataclass
class Part:
    n: str
    keys: list
    attempts: list[int]
    worst: list[Cost]
    file: str | None = None
    batch: str | None = None
    at: float = 0.0  # when its upload began (the batches to look through after a kill)
    status: str = "uploading"
    counts: dict = field(default_factory=dict)


class BatchTransport(BatchWire):
    """The parts of one ledger; `submit` new requests, `wait` for parts to end (the calls: batch_wire.py)."""

    def __init__(
        self,
        runner,
        prompts_of,
        stop: list[str] | None = None,
        logit_bias: dict[str, int] | None = None,
        metadata: dict | None = None,
    ):
        super().__init__(runner.api, runner.key, prompts_of, stop, logit_bias)
        self.r = runner
        self.led = runner.ledger
        self.cfg = runner.api.batch
        self.metadata = {k: str(v)[:500] for k, v in (metadata or {}).items()}
        self.parts: dict[str, Part] = {}
        self.retry: set = set()  # keys whose line failed or expired, to send again
        self.given_up: set = set()
        self._recover()

    def _recover(self) -> None:
        f, ended = self.led.field, set()
        for e in self.led.batch_entries:
            if e["t"] == "upload":
                self.parts[e["n"]] = Part(e["n"], e[f + "s"], e["a"], [Cost(*w) for w in e["worst"]], at=e["at"])
                for k, a in zip(e[f + "s"], e["a"]):
                    self.led.keys.add(k)
                    self.led.attempts[k] = max(self.led.attempts[k], a)
            elif e["t"] == "file":
                self.parts[e["n"]].file = e["file"]
            elif e["t"] == "batch":
                self.parts[e["n"]].batch, self.parts[e["n"]].status = e["batch"], "submitted"
            elif e["t"] == "batch_end":
                ended.add(e["n"])
        for n in ended:
            del self.parts[n]
        for p in self.parts.values():  # still reserved: what its unsettled lines may cost
            for k, a, w in zip(p.keys, p.attempts, p.worst):
                if (k, a) not in self.led.results:
                    self.r.budget.hold(w)

    @property
    def pending(self) -> set:
        """Keys in parts not yet ended."""
        return {k for p in self.parts.values() for k in p.keys}

    # ---- submitting -------------------------------------------------------------------------------------------

    async def submit(self, keys_wanted: list) -> int:
        """Submit requests (by key) in as many parts as the file limits need, each only once its worst case at
        the batch price is reserved; stops at the first that does not fit. Returns how many were submitted."""
        lines, keys, worst = [], [], []
        for key in keys_wanted:
            cost = self.r.worst_case(self.prompts_of(key))
            if self.r.budget.reserve(cost) is None:
                break
            lines.append(self._line(key))
            keys.append(key)
            worst.append(cost)
        start, limit = 0, int(self.cfg.max_file_mb * 1e6)
        while start < len(lines):
            end, size = start, 0
            while end < len(lines) and end - start < self.cfg.max_requests_per_file and size + len(lines[end]) <= limit:
                size += len(lines[end])
                end += 1
            end = max(end, start + 1)
            await self._new_part(keys[start:end], worst[start:end], b"".join(lines[start:end]))
            start = end
        self.r.calls += len(keys)
        return len(keys)

    async def _new_part(self, keys: list, worst: list[Cost], data: bytes) -> None:
        attempts = []
        for k in keys:
            self.led.attempts[k] += 1
            attempts.append(self.led.attempts[k])
            self.led.keys.add(k)
        p = Part(uuid.uuid4().hex[:16], keys, attempts, worst, at=time.time())
        await self.led.journal.commit(
            {
                "t": "upload",
                "n": p.n,
                self.led.field + "s": keys,
                "a": attempts,
                "worst": [[w.usd, w.tokens] for w in worst],
                "at": p.at,
            }
        )
        self.parts[p.n] = p
        await self._start(p, data)

    async def _start(self, p: Part, data: bytes | None = None) -> None:
        """Take part `p` from wherever it stopped to a batch at the API."""
        c = self.client.openai
        if p.file is None:
            if data is None:
                data = await asyncio.get_running_loop().run_in_executor(None, self._rebuild, p)
            # an upload retried after a lost answer may leave a stray file at the API: no batch, no cost
            f = await self._call(
                "upload a file", lambda: c.files.create(file=(f"alpaca-ds-{p.n}.jsonl", data), purpose="batch")
            )
            await self.led.journal.commit({"t": "file", "n": p.n, "file": f.id})
            p.file = f.id
        if p.batch is None:
            url = "/v1/completions" if self.api.mode == "completions" else "/v1/chat/completions"

            async def find_or_create():  # a create whose answer was lost may have created it: look first
                return await self._find_batch(p.file, p.at) or await c.batches.create(
                    input_file_id=p.file,
                    endpoint=url,
                    completion_window=self.cfg.completion_window,
                    metadata={**self.metadata, "part": p.n},
                )

            found = await self._call("create a batch", find_or_create)
            await self.led.journal.commit({"t": "batch", "n": p.n, "batch": found.id})
            p.batch, p.status = found.id, found.status

    def _rebuild(self, p: Part) -> bytes:
        """The input file of a part whose upload a kill interrupted: the same lines again."""
        return b"".join(self._line(k) for k in p.keys)

    # ---- collecting -------------------------------------------------------------------------------------------

    async def resume(self, create: bool = True) -> None:
        """Parts an earlier run left before their batch existed: upload / create them now. Not `create` (a
        cancel): only find the batches a kill kept from being recorded; a part without one is closed, unsent."""
        for p in list(self.parts.values()):
            if p.batch is not None:
                continue
            if create:
                await self._start(p)
                continue
            found = await self._find_batch(p.file, p.at) if p.file else None
            if found is not None:
                await self.led.journal.commit({"t": "batch", "n": p.n, "batch": found.id})
                p.batch = found.id
            else:
                await self._close(p, "cancelled", {})

    async def wait(self) -> int:
        """Poll until at least one part ends (or the run stops); settle the ended ones; returns how many ended."""
        return await self._poll(lambda: not self.r.stopping)

    async def _wait_even_if_stopped(self) -> int:
        return await self._poll(lambda: True)

    async def _poll(self, go_on) -> int:
        while self.parts and go_on():
            ended = 0
            for p in list(self.parts.values()):
                b = await self._call("look at a batch", lambda p=p: self.client.openai.batches.retrieve(p.batch))
                p.status, p.counts = b.status, (b.request_counts.model_dump() if b.request_counts else {})
                if b.status in TERMINAL:
                    await self._settle(p, b)
                    ended += 1
            self._show()
            if ended:
                return ended
            if self.r.stop_event.is_set():
                await asyncio.sleep(self.api.batch.poll_s)
            else:
                try:  # a stop (Ctrl-C) ends the wait at once
                    await asyncio.wait_for(self.r.stop_event.wait(), self.api.batch.poll_s)
                except asyncio.TimeoutError:
                    pass
        return 0

    def _show(self) -> None:
        total = sum(len(p.keys) for p in self.parts.values())
        done = sum(p.counts.get("completed", 0) for p in self.parts.values())
        failed = sum(p.counts.get("failed", 0) for p in self.parts.values())
        status = ",".join(sorted({p.status for p in self.parts.values()})) or "-"
        self.r.progress.update(
            0,
            f"{len(self.parts)} batches {status}: {done}/{total} done, {failed} failed; "
            f"${self.r.budget.reserved_usd:.4f} reserved, ${self.r.budget.spent_usd:.4f} spent",
        )

    async def _settle(self, p: Part, b) -> None:
        """Every line of an ended batch into the ledger (its usage at the batch price), then its end."""
        got = {}
        for line in await self._lines(b.output_file_id) + await self._lines(b.error_file_id):
            got[line["custom_id"]] = line
        if b.status in ("failed", "expired"):
            why = "; ".join(e.message for e in (b.errors.data or [])) if b.errors else ""
            self.r.say(
                f"batch {p.batch} {b.status} ({why or 'no reason given'}): its unanswered requests go "
                "into the next wave"
            )
        await self._close(p, b.status, got)

    async def _close(self, p: Part, status: str, got: dict) -> None:
        """Settle each line of part `p` not settled yet (`got`: its output and error lines by custom_id; a
        missing line was not answered), decide what is sent again, and record the part's end."""
        waits, failed = [], []
        for key, a, worst in zip(p.keys, p.attempts, p.worst):
            if (key, a) in self.led.results:
                continue  # settled before a kill
            outcome = self._outcome(got.get(str(key)), status, len(self.prompts_of(key)))
            entry = self.r.caller.result_entry(key, a, worst, outcome, f"request {key}")
            entry["batch"] = p.batch
            waits.append(self.led.journal.enqueue(entry))
            if not outcome.ok:
                failed.append(key)
        await asyncio.gather(*waits)
        for key in failed:  # sent again in a later wave, or given up after api.max_retries
            if self.led.failed_attempts(key) > self.api.max_retries:
                self.given_up.add(key)
                await self.r.give_up(key, "batch", f"failed in {self.led.failed_attempts(key)} batches")
            else:
                self.retry.add(key)
        await self.led.journal.commit({"t": "batch_end", "n": p.n, "status": status})
        del self.parts[p.n]

    async def cancel(self) -> int:
        """Cancel every part still running at the API; returns how many."""
        import openai

        n = 0
        for p in self.parts.values():
            try:
                await self._call("cancel a batch", lambda p=p: self.client.openai.batches.cancel(p.batch))
                n += 1
            except (openai.BadRequestError, openai.ConflictError):
                pass  # it ended meanwhile: it is collected as it is
        return n

    async def finish(self, cancel: bool) -> None:
        """The end of a run: with `cancel`, cancel the batches still running and settle what they answered;
        else, if the run stopped with batches still running (Ctrl-C), say how to collect them."""
        if cancel:
            n = await self.cancel()
            while self.parts:
                await self._wait_even_if_stopped()
            self.r.stop("cancelled", f"cancelled {n} batches; what they had answered is in the ledger")
            if n:
                self.r.say(f"cancelled {n} batches; what they had answered is in the ledger")
        elif self.parts:
            self.r.say(
                f"{len(self.parts)} batches are still running at the API (they are paid when they finish): "
                "rerun the same command to collect them, or add --cancel-batches to cancel them"
            )

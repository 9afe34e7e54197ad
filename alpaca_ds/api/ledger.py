"""The call ledger: one append-only, fsync'd JSONL file per run directory, and its replay.

Every attempt is two lines (api/calls.py writes them): a `send` with its worst-case cost, fsync'd before the
request leaves, and its `result` (the usage at the price, or the worst case when it may have been billed without
usage; the answer's choices), fsync'd before anything is derived from it:

    {"t": "send",   FIELD: KEY, "a": 1, "usd": <worst case>, "tok": <worst case>}
    {"t": "result", FIELD: KEY, "a": 1, "kind": "ok", "usage": [p, c], "charged": "usage", "usd": ..., "tok": ...,
     "choices": [{"prompt": 0, "index": 0, "text": ..., "finish_reason": ...}]}
    {"t": "gave_up", FIELD: KEY, ...}                     the request failed all its retries

FIELD names a request: "i", its index (generate), or "k", a hash of what it asks (evaluate). The batch transport
adds its own lines (api/batch.py), which the replay hands back in `batch_entries`.

Replaying a ledger rebuilds what it paid for and received: spend (a `send` without its `result` was in flight
when a process died, and is charged its worst case, since the API may have billed it), the answers, the
attempts and failures per request. So a budget holds over every run that shares the ledger, and no answered
request is paid for twice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from alpaca_ds.api.budget import Cost
from alpaca_ds.common.journal import Journal, read_jsonl

INTERRUPTED = "the process stopped while this attempt was in flight; the API may have billed it"


def interrupted_result(field: str, key, attempt: int, charge: Cost, how: str, why: str) -> dict:
    """The result line of an attempt that got no answer: abandoned, or in flight when a process died."""
    return {
        "t": "result",
        field: key,
        "a": attempt,
        "kind": "interrupted",
        "http": None,
        "usage": None,
        "charged": how,
        "usd": charge.usd,
        "tok": charge.tokens,
        "error": why,
    }


class CallLedger:
    """The replay of a ledger file, kept up to date as the run adds lines through `journal`. Not `writable`: a
    look at it (what it implies), changing nothing."""

    def __init__(self, path: Path, field: str, writable: bool = True):
        self.path = Path(path)
        self.field = field
        self.ok: dict = {}  # request -> choices of its successful attempt
        self.gave_up: set = set()
        self.keys: set = set()  # every request the ledger names
        self.attempts: Counter = Counter()  # request -> attempts made so far
        self.failures: Counter = Counter()  # request -> failed answers (attempts cut off by a kill not counted)
        self.outcomes: Counter = Counter()  # attempt kind -> count
        self.spent = Cost(0.0, 0)
        self.prompt_tokens = self.completion_tokens = 0
        self.charged_worst_case_usd = 0.0
        self.batch_entries: list[dict] = []
        self.results: set = set()  # (request, attempt) of every result line
        self.keep_choices = True  # False once a run takes answers straight from its calls (memory)
        entries, good = read_jsonl(self.path)
        sends, finished = {}, set()
        for e in entries:
            if e["t"] not in ("send", "result", "gave_up"):
                self.batch_entries.append(e)
                continue
            key = e[field]
            self.keys.add(key)
            if e["t"] == "gave_up":
                self.gave_up.add(key)
                continue
            self.attempts[key] = max(self.attempts[key], e["a"])
            if e["t"] == "send":
                sends[(key, e["a"])] = e
            else:
                finished.add((key, e["a"]))
                self.add_result(e)
        orphans = [
            interrupted_result(field, k, a, Cost(s["usd"], s["tok"]), "worst_case", INTERRUPTED)
            for (k, a), s in sends.items()
            if (k, a) not in finished
        ]
        for r in orphans:
            self.add_result(r)
        self.interrupted = len(orphans)
        self.journal = None
        if writable:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.journal = Journal(self.path, good)
            self.journal.append_many(orphans)  # so every send has its result, and the charge is on record

    def add_result(self, r: dict) -> None:
        key = r[self.field]
        self.keys.add(key)
        self.results.add((key, r["a"]))
        self.outcomes[r["kind"]] += 1
        if r["kind"] not in ("ok", "interrupted", "cancelled"):  # a kill or a cancel is not the request's failure
            self.failures[key] += 1
        self.spent = Cost(self.spent.usd + r["usd"], self.spent.tokens + r["tok"])
        if r["charged"] == "usage":
            self.prompt_tokens += r["usage"][0]
            self.completion_tokens += r["usage"][1]
        elif r["charged"] == "worst_case":
            self.charged_worst_case_usd += r["usd"]
        if r["kind"] == "ok" and key not in self.ok:
            self.ok[key] = r["choices"] if self.keep_choices else None

    def failed_attempts(self, key) -> int:
        """What api.max_retries counts: failed answers (attempts cut off by a kill or an interrupt are not)."""
        return self.failures[key]

    def open_batches(self) -> int:
        """Batch parts (api/batch.py) uploaded and not yet ended: requests the Batch API may still answer."""
        ends = sum(e["t"] == "batch_end" for e in self.batch_entries)
        return sum(e["t"] == "upload" for e in self.batch_entries) - ends

    def complete(self, key) -> bool:
        return key in self.ok or key in self.gave_up

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

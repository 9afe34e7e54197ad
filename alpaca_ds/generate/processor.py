"""The in-order processor: parse -> filters -> exact duplicate -> ROUGE-L, stopping at the target.

Requests are processed strictly in request order, so the same answers give the same dataset whatever order they
arrived in, at any concurrency and with either transport.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

from alpaca_ds.generate import prompts as P
from alpaca_ds.generate.filters import Filters
from alpaca_ds.generate.setup import Setup


class Processor:
    def __init__(self, setup: Setup):
        from alpaca_ds.generate.rouge import RougeIndex

        cfg = setup.cfg
        self.cfg = cfg
        self.k = cfg.num_prompt_instructions
        self.chat = cfg.api.mode == "chat"
        self.filters = Filters(cfg.filters)
        # the batch transport's answers arrive thousands at once with no request loop to serve: both cores scan
        two = cfg.api.transport == "batch" and (os.cpu_count() or 1) >= 2
        self.index = RougeIndex(threshold=cfg.rouge_threshold, top_k=10, compute_mean=True, workers=2 if two else 1)
        for ex in setup.seeds:  # Alpaca de-duplicates against the seeds too
            self.index.add(ex.instruction)
        if setup.seeds:  # compile (or load from numba's cache) the index's loops before any request is paid for
            self.index.query(setup.seeds[0].instruction)
        self.seen = {ex.instruction for ex in setup.seeds}
        self.accepted: list[dict] = []
        self.rejected: Counter = Counter()
        self.dropped_blocks: Counter = Counter()
        self.candidates = 0
        self.unused_after_target = 0
        self.requests_ok = 0
        self.requests_failed = 0
        self.lock = threading.Lock()  # process() runs in a worker thread; readers of the counters take this

    @property
    def processed_requests(self) -> int:
        return self.requests_ok + self.requests_failed

    @property
    def done(self) -> bool:
        return len(self.accepted) >= self.cfg.num_instructions

    def process(self, index: int, choices: list[dict] | None) -> list[dict]:
        """Request `index`'s final outcome (None: it failed all retries) -> the records it adds."""
        with self.lock:
            return self._process(index, choices)

    def _process(self, index: int, choices: list[dict] | None) -> list[dict]:
        if choices is None:
            self.requests_failed += 1
            return []
        new = []
        for choice in choices:
            cands, dropped = P.parse_response(choice["text"], choice.get("finish_reason"), self.k, self.chat)
            self.dropped_blocks.update(dropped)
            for cand in cands:
                self.candidates += 1
                if self.done:
                    self.unused_after_target += 1
                    continue
                reason = self.filters.reject_reason(cand.instruction)
                if reason is None and cand.instruction in self.seen:
                    reason = "duplicate"
                match = None
                if reason is None:
                    match = self.index.query(cand.instruction)
                    if match.max_score > self.cfg.rouge_threshold:
                        reason = "rouge_similar"
                if reason is not None:
                    self.rejected[reason] += 1
                    continue
                record = {
                    "instruction": cand.instruction,
                    "input": cand.input,
                    "output": cand.output,
                    "most_similar_instructions": {t: float(s) for t, s in match.top},
                    "avg_similarity_score": float(match.mean),
                    "request": index,
                    "prompt": choice["prompt"],
                    "choice": choice["index"],
                }
                self.index.add(cand.instruction)
                self.seen.add(cand.instruction)
                self.accepted.append(record)
                new.append(record)
        # counted once its records are in: the request loop reads accepted / processed as the yield per request
        self.requests_ok += 1
        return new


def alpaca_record(record: dict) -> dict:
    """An accepted record as Alpaca's regen.json has it (without our provenance keys)."""
    return {
        k: record[k] for k in ("instruction", "input", "output", "most_similar_instructions", "avg_similarity_score")
    }


def process_in_order(proc: Processor, ledger, start: int = 0) -> int:
    """Feed `proc` the ledger's requests in request order while each is complete; returns the next index."""
    i = start
    while not proc.done and ledger.complete(i):
        proc.process(i, ledger.ok.get(i))
        i += 1
    return i

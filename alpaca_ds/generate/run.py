"""Self-instruct generation, end to end: prompts -> teacher -> parse -> filters -> ROUGE-L -> accepted records.

    alpaca-ds teacher serve --port 8765 &                                   # the local simulator, or a real API
    alpaca-ds generate --config launch/recipes/self_instruct_local.yaml
    alpaca-ds generate --config launch/recipes/self_instruct_openai.yaml --dry-run

How it stays exact, cheap and crash-safe:
  * Request i's prompts are a pure function of (seed, i). Completions may arrive in any order; they are
    processed (parsed, filtered, de-duplicated) strictly in request order, so the same teacher answers give the
    same dataset at any concurrency, and the run stops at exactly `num_instructions`.
  * out_dir/responses.jsonl is the ledger. Before an attempt is sent, a `send` line with its worst-case cost
    is fsync'd; its outcome (usage, cost, the raw choices) is fsync'd as a `result` line before anything is
    derived from it. A restart replays the ledger in request order and rebuilds everything: spend (an attempt
    with no result was in flight at the kill and is charged its worst case, since the API may have billed it),
    the accepted set and ROUGE index, rejection counts, and which requests still need sending.
  * accepted.jsonl is written only by the in-order processor, after the ledger; on restart it must equal the
    replay (a torn last line is cut, records the kill kept from being written are appended), so no record is
    lost or written twice.
  * Budget: an attempt is sent only after its worst case (prompt tokens + max_tokens x completions, priced) is
    reserved against what is left; the API's usage settles it (the worst case when usage is unknown).
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import heapq
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_bytes, atomic_write_json, sha256_file
from alpaca_ds.config import GenerateConfig
from alpaca_ds.generate import prompts as P
from alpaca_ds.generate.budget import Budget, Cost
from alpaca_ds.generate.calls import Caller, backoff_delay, replay_attempts
from alpaca_ds.generate.client import api_key, prompt_tokens
from alpaca_ds.generate.filters import Filters
from alpaca_ds.generate.journal import Journal, read_jsonl
from alpaca_ds.generate.prices import Price, price_for
from alpaca_ds.generate.seeds import Example, load_seed_tasks
from alpaca_ds.generate.tokens import get_encoding

LEDGER = "responses.jsonl"
ACCEPTED = "accepted.jsonl"

# how a run ended -> the command's exit status
EXIT_CODES = {"target": 0, "max_requests": 0, "budget": 3, "failures": 4, "fatal": 5, "interrupted": 130}


@dataclass
class Setup:
    """Everything checked before any request: seeds, template, tokenizer, price, key."""
    cfg: GenerateConfig
    seeds: list[Example]
    seeds_sha256: str
    template: str
    encoding_name: str
    enc: object
    price: Price
    key: str | None
    stop: list[str]
    logit_bias: dict[str, int] | None

    @property
    def prompts_per_request(self) -> int:
        return 1 if self.cfg.api.mode == "chat" else self.cfg.api.prompts_per_request

    def prompts(self, index: int) -> list[str]:
        c = self.cfg
        return P.request_prompts(self.template, self.seeds, c.num_prompt_instructions, c.num_tasks, c.seed, index,
                                 self.prompts_per_request)

    def prompt_tokens(self, prompts: list[str]) -> int:
        return prompt_tokens(self.enc, prompts, self.cfg.api.mode)

    def worst_case(self, prompt_tokens: int, num_prompts: int) -> Cost:
        completion = self.cfg.api.max_tokens * self.cfg.api.n * num_prompts
        return Cost(self.price.cost(prompt_tokens, completion), prompt_tokens + completion)

    def fingerprint(self) -> dict:
        """The settings a run's output depends on; a restart must use the same ones."""
        c, a = self.cfg, self.cfg.api
        return {
            "seed": c.seed, "seed_tasks_sha256": self.seeds_sha256,
            "prompt_template_sha256": hashlib.sha256(self.template.encode()).hexdigest(),
            "num_prompt_instructions": c.num_prompt_instructions, "num_tasks": c.num_tasks,
            "rouge_threshold": c.rouge_threshold, "filters": c.filters.model_dump(mode="json"),
            "api": {"model": a.model, "mode": a.mode, "prompts_per_request": self.prompts_per_request, "n": a.n,
                    "max_tokens": a.max_tokens, "temperature": a.temperature, "top_p": a.top_p,
                    "ban_end_of_text": a.ban_end_of_text},
            "encoding": self.encoding_name,
        }


def prepare(cfg: GenerateConfig, need_key: bool = True) -> Setup:
    """Check every input that can be wrong before a request is made; each problem is one clear UserError."""
    if cfg.num_tasks <= cfg.num_prompt_instructions + 1:
        raise UserError(f"num_tasks ({cfg.num_tasks}) must exceed num_prompt_instructions + 1 "
                        f"({cfg.num_prompt_instructions + 1}) to leave tasks for the teacher to write")
    tasks = load_seed_tasks(cfg.seed_tasks)
    if len(tasks) < cfg.num_prompt_instructions:
        raise UserError(f"{cfg.seed_tasks}: {len(tasks)} seed tasks, fewer than num_prompt_instructions "
                        f"({cfg.num_prompt_instructions})")
    template = P.load_template(cfg.prompt_template)
    enc = get_encoding(cfg.api.model, cfg.api.encoding)
    price = price_for(cfg.api.model, cfg.budget)
    key = api_key(cfg.api) if need_key else None
    return Setup(cfg, [t.example for t in tasks], sha256_file(cfg.seed_tasks), template, enc.name, enc, price, key,
                 P.stop_sequences(cfg.num_tasks), P.logit_bias(enc) if cfg.api.ban_end_of_text else None)


# --------------------------------------------------------------------------------------------------------------
# The in-order processor: parse -> filters -> exact duplicate -> ROUGE-L, stopping at the target.


class Processor:
    def __init__(self, setup: Setup):
        from alpaca_ds.generate.rouge import RougeIndex
        cfg = setup.cfg
        self.cfg = cfg
        self.k = cfg.num_prompt_instructions
        self.chat = cfg.api.mode == "chat"
        self.filters = Filters(cfg.filters)
        self.index = RougeIndex(threshold=cfg.rouge_threshold, top_k=10, compute_mean=True)
        for ex in setup.seeds:  # Alpaca de-duplicates against the seeds too
            self.index.add(ex.instruction)
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
        self.requests_ok += 1
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
                record = {"instruction": cand.instruction, "input": cand.input, "output": cand.output,
                          "most_similar_instructions": {t: float(s) for t, s in match.top},
                          "avg_similarity_score": float(match.mean),
                          "request": index, "prompt": choice["prompt"], "choice": choice["index"]}
                self.index.add(cand.instruction)
                self.seen.add(cand.instruction)
                self.accepted.append(record)
                new.append(record)
        return new


def alpaca_record(record: dict) -> dict:
    """An accepted record as Alpaca's regen.json has it (without our provenance keys)."""
    return {k: record[k] for k in ("instruction", "input", "output", "most_similar_instructions",
                                   "avg_similarity_score")}


# --------------------------------------------------------------------------------------------------------------
# The ledger replay: what a previous run in this out_dir paid for and received.


@dataclass
class Ledger:
    ok: dict[int, list[dict]] = field(default_factory=dict)      # request -> choices of its successful attempt
    gave_up: set[int] = field(default_factory=set)
    attempts: Counter = field(default_factory=Counter)           # request -> attempts made so far
    failures: Counter = field(default_factory=Counter)           # request -> failed answers (kills not counted)
    outcomes: Counter = field(default_factory=Counter)           # attempt kind -> count
    spent: Cost = Cost(0.0, 0)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged_worst_case_usd: float = 0.0
    max_index: int = -1

    keep_choices: bool = True  # during a run the processor gets the choices directly

    def add_result(self, r: dict) -> None:
        self.outcomes[r["kind"]] += 1
        if r["kind"] not in ("ok", "interrupted"):
            self.failures[r["i"]] += 1
        self.spent = Cost(self.spent.usd + r["usd"], self.spent.tokens + r["tok"])
        if r["charged"] == "usage":
            self.prompt_tokens += r["usage"][0]
            self.completion_tokens += r["usage"][1]
        elif r["charged"] == "worst_case":
            self.charged_worst_case_usd += r["usd"]
        if r["kind"] == "ok" and r["i"] not in self.ok:
            self.ok[r["i"]] = r["choices"] if self.keep_choices else None

    def failed_attempts(self, i: int) -> int:
        """What api.max_retries counts: failed answers (attempts cut off by a kill or interrupt are not)."""
        return self.failures[i]

    def complete(self, i: int) -> bool:
        return i in self.ok or i in self.gave_up


def replay_ledger(entries: list[dict]) -> tuple[Ledger, list[dict]]:
    """(the ledger's state, results to append for attempts that were in flight when the last run died)."""
    led = Ledger()
    for e in entries:
        led.max_index = max(led.max_index, e["i"])
        if e["t"] == "gave_up":
            led.gave_up.add(e["i"])
    orphans = replay_attempts(entries, "i", led, "the process stopped while this attempt was in flight; the API "
                                                 "may have billed it")
    return led, orphans


def process_in_order(proc: Processor, ledger: Ledger) -> int:
    """Feed `proc` the ledger's requests in request order while each is complete; returns the next index."""
    i = 0
    while not proc.done and ledger.complete(i):
        proc.process(i, ledger.ok.get(i))
        i += 1
    return i


# --------------------------------------------------------------------------------------------------------------
# The run.


class Generator:
    def __init__(self, setup: Setup):
        self.s = setup
        self.cfg = setup.cfg
        self.out = Path(self.cfg.out_dir)
        self.stop_reason: str | None = None
        self.message = ""
        self.started = time.monotonic()
        self.completed_this_run = 0
        self.attempts_this_run = 0
        self.consecutive_failures = 0
        self._stopping = False      # no new requests, no more retries
        self._abandon = False
        self._bar = None
        self._first_send: float | None = None
        self._last_answer: float | None = None
        self._last_status = 0.0
        self._jitter = random.Random()  # timing only: never touches what is generated

    # ---- startup ----------------------------------------------------------------------------------------------

    def _open(self) -> None:
        import fcntl
        self.out.mkdir(parents=True, exist_ok=True)
        # one run per out_dir at a time; the kernel drops the lock when a process dies, however it dies
        self._lock_fd = os.open(self.out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._recover()
        except BlockingIOError:
            os.close(self._lock_fd)
            raise UserError(f"{self.out}: another `alpaca-ds generate` is running on this out_dir") from None
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _recover(self) -> None:
        run_json = self.out / "run.json"
        fp = self.s.fingerprint()
        if run_json.exists():
            old = json.loads(run_json.read_text())["fingerprint"]
            if old != fp:
                diff = sorted(_diff_keys(old, fp))
                raise UserError(f"{self.out} was generated with different settings ({', '.join(diff)}); a restart "
                                "must use the same ones to continue exactly. Restore them, or use a new out_dir.")
        else:
            atomic_write_json(run_json, {"fingerprint": fp, "config": json.loads(json.dumps(
                self.cfg.model_dump(mode="json")))})

        entries, good = read_jsonl(self.out / LEDGER)
        self.ledger, orphans = replay_ledger(entries)
        self.journal = Journal(self.out / LEDGER, good)
        self.journal.append_many(orphans)  # so every send has its result, and the charge is on record
        self.budget = Budget(self.cfg.budget.max_usd, self.cfg.budget.max_tokens, self.ledger.spent)

        # rebuild the accepted set by processing the ledger in request order
        self.proc = Processor(self.s)
        self.next_to_process = process_in_order(self.proc, self.ledger)
        replayed = self.proc.accepted
        on_disk, acc_good = read_jsonl(self.out / ACCEPTED)
        if len(on_disk) > len(replayed):
            extra = ("more than num_instructions; raise num_instructions or use a new out_dir"
                     if self.proc.done else "more than the ledger explains")
            raise UserError(f"{self.out / ACCEPTED} holds {len(on_disk)} records, {extra}")
        for j, rec in enumerate(on_disk):
            if rec != replayed[j]:
                raise UserError(f"{self.out / ACCEPTED}:{j + 1} differs from the replay of {LEDGER} "
                                f"({rec.get('instruction')!r} vs {replayed[j]['instruction']!r}); the files do "
                                "not belong together. Use a new out_dir.")
        self.accepted_journal = Journal(self.out / ACCEPTED, acc_good)
        self.accepted_journal.append_many(replayed[len(on_disk):])
        self.recovered = {"accepted_on_disk": len(on_disk), "accepted_restored": len(replayed) - len(on_disk),
                          "interrupted_attempts": len(orphans)}

        # completed requests waiting for an earlier one, and what is left to send
        self.completed: dict[int, list[dict] | None] = {
            i: self.ledger.ok.get(i) for i in range(self.next_to_process, self.ledger.max_index + 1)
            if self.ledger.complete(i)}
        self.unsent = [i for i in range(self.next_to_process, self.ledger.max_index + 1)
                       if not self.ledger.complete(i)]
        heapq.heapify(self.unsent)
        self.next_new = self.ledger.max_index + 1
        self.ledger.ok = dict.fromkeys(self.ledger.ok)  # their choices are processed or in self.completed
        self.ledger.keep_choices = False
        self.tasks: dict[int, asyncio.Task] = {}
        self.specs: dict[int, tuple[list[str], Cost]] = {}

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
        pending = len(self.tasks) + len(self.completed)
        if self.proc.processed_requests == 0:  # no yield measured yet: the dry run's prior (Alpaca's ~25% kept)
            c = self.cfg
            per_request = ((c.num_tasks - c.num_prompt_instructions - 1) * self.s.prompts_per_request * c.api.n
                           * c.expected_accept_rate)
        else:
            per_request = len(self.proc.accepted) / self.proc.processed_requests
        return pending * per_request < need

    def _spec(self, i: int) -> tuple[list[str], Cost]:
        if i not in self.specs:
            prompts = self.s.prompts(i)
            self.specs[i] = (prompts, self.s.worst_case(self.s.prompt_tokens(prompts), len(prompts)))
        return self.specs[i]

    def _launch(self) -> None:
        while (not self._stopping and len(self.tasks) - self.caller.settling < self.cfg.concurrency
               and self._need_more()):
            i = self._peek_index()
            if i is None:
                break
            _, worst = self._spec(i)
            reservation = self.budget.reserve(worst)
            if reservation is None:
                if self.budget.outstanding == 0:
                    self._stop("budget", self._budget_message(worst))
                break
            self._take_index(i)
            task = asyncio.get_running_loop().create_task(self._request(i, reservation))
            task.add_done_callback(lambda _t: self._wake.set())
            self.tasks[i] = task

    def _budget_message(self, worst: Cost) -> str:
        b, c = self.budget, self.cfg.budget
        what = f"${b.spent_usd:.4f} of budget.max_usd ${c.max_usd:g}"
        if c.max_tokens is not None:
            what += f" and {b.spent_tokens:,} of budget.max_tokens {c.max_tokens:,}"
        return (f"budget exhausted: spent {what}; the next request could cost up to ${worst.usd:.4f} / "
                f"{worst.tokens:,} tokens. Raise the budget and rerun the same command to continue.")

    # ---- one request, with retries ------------------------------------------------------------------------------

    async def _request(self, i: int, reservation: Cost) -> tuple[str, list[dict] | None]:
        """('ok', choices) | ('failed', None) when it gave up | ('incomplete', None) when stopped before an answer.

        Waits (rate limit, backoff, budget) end early when the run stops; only a second interrupt cancels a
        request, and then what was on the wire is charged at its worst case.
        """
        prompts, worst = self._spec(i)
        api = self.cfg.api
        how, outcome = await self.caller.call(i, prompts, worst, stop=self.s.stop, logit_bias=self.s.logit_bias,
                                              reservation=reservation, label=f"request {i}")
        if how == "ok":
            self.consecutive_failures = 0
            return "ok", outcome.choices
        if how == "fatal":
            self._stop("fatal", f"the API refused the request ({outcome.kind}, HTTP {outcome.http}): "
                       f"{outcome.error}. Check api.base_url, api.model and the key in ${api.api_key_env}.")
        elif how == "budget":
            self._stop("budget", self._budget_message(worst))
        elif how == "failed":
            await self.journal.commit({"t": "gave_up", "i": i, "a": self.ledger.attempts[i], "kind": outcome.kind,
                                       "error": outcome.error})
            self.ledger.gave_up.add(i)
            self.consecutive_failures += 1
            if self.consecutive_failures >= api.max_consecutive_failures:
                self._stop("failures", f"{self.consecutive_failures} requests in a row failed all retries "
                           f"(last: {outcome.kind}: {outcome.error}); is the API healthy?")
            return "failed", None
        return "incomplete", None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """The wait before a retry, as its requests wait (calls.backoff_delay)."""
        return backoff_delay(self.cfg.api, attempt, retry_after, self._jitter)

    def _sent(self) -> None:
        self.attempts_this_run += 1
        if self._first_send is None:
            self._first_send = time.monotonic()

    def _answered(self) -> None:
        self._last_answer = time.monotonic()
        self._wake.set()

    # ---- the loop -----------------------------------------------------------------------------------------------

    def _stop(self, reason: str, message: str) -> None:
        if self.stop_reason is None:
            self.stop_reason, self.message = reason, message
        self._stopping = True
        self._stop_event.set()  # requests waiting (rate limit, backoff, budget) give up; those on the wire finish
        self._wake.set()

    def _collect(self) -> None:
        for i, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[i]
                self.specs.pop(i, None)
                status, choices = ("incomplete", None) if task.cancelled() else task.result()
                if status == "incomplete":
                    heapq.heappush(self.unsent, i)
                else:
                    self.completed[i] = choices
                    self.completed_this_run += 1
                    self._processable.set()

    async def _processor(self) -> None:
        """Process completed requests strictly in request order, each in a worker thread.

        Parsing, filters and ROUGE-L are CPU work; in a thread, the event loop keeps serving the network while
        they run (the GIL is handed over every few ms), instead of waiting for whole slices of it. Accepted
        records are queued for accepted.jsonl here, on the loop, in order, after the ledger holds their source.
        """
        loop = asyncio.get_running_loop()
        while not self.proc.done and not self._abandon:
            i = self.next_to_process
            if i not in self.completed:
                if self._final:
                    break
                await self._processable.wait()
                self._processable.clear()
                continue
            self._processing = True
            try:
                new = await loop.run_in_executor(self._proc_executor, self.proc.process, i, self.completed[i])
            finally:
                self._processing = False
            del self.completed[i]
            for rec in new:
                self.accepted_journal.enqueue(rec, wait=False)
            if new and self._bar is not None:
                self._bar.update(len(new))
            self.next_to_process += 1
            self._wake.set()
        if self.proc.done and self.stop_reason is None:
            self._stop_at_target()

    def _stop_at_target(self) -> None:
        self._stop("target", f"reached num_instructions = {self.cfg.num_instructions}")

    def _on_signal(self) -> None:
        if not self._stopping:
            self._stop("interrupted", "interrupted; rerun the same command to continue")
            self._say(f"stopping: waiting for {len(self.tasks)} requests in flight (interrupt again to "
                      "abandon them; they are then charged at their worst case)")
        else:
            self._abandon = True
            self._wake.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        self.caller = Caller(self.cfg.api, self.s.key, "i", self.ledger, self.journal, self.budget, self.s.price,
                             self._stop_event, say=self._say, on_send=self._sent, on_answer=self._answered)
        from concurrent.futures import ThreadPoolExecutor
        self._proc_executor = ThreadPoolExecutor(1, thread_name_prefix="generate-process")
        self._processable = asyncio.Event()
        self._processing = False
        self._final = False
        processor = loop.create_task(self._processor())
        if self.proc.done:  # a finished run, rerun: replaying the ledger reached the target
            self._stop_at_target()
        try:
            while True:
                self._collect()
                self._launch()
                self._status()
                if processor.done():
                    processor.result()  # an exception in processing is a bug: surface it
                if not self.tasks:
                    backlog = self._processing or self.next_to_process in self.completed
                    if not self._stopping and not backlog:
                        if self._peek_index() is not None:
                            raise RuntimeError("generate: nothing in flight and nothing sent (scheduler bug)")
                        self._stop("max_requests", f"sent max_requests = {self.cfg.max_requests} requests")
                    if self._stopping:
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
            self._final = True  # process what is ready, then stop
            self._processable.set()
            await processor
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if not processor.done():
                self._abandon = True
                self._processable.set()
                await asyncio.gather(processor, return_exceptions=True)
            self._proc_executor.shutdown(wait=True)
            await self.journal.drain()
            await self.accepted_journal.drain()
            await self.caller.close()

    # ---- reporting ----------------------------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def _status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < 0.5:
            return
        self._last_status = now
        if self._bar is not None:
            rate = self.completed_this_run / max(now - (self._first_send or now), 1e-9)
            self._bar.set_postfix_str(f"{rate:.1f} req/s, ${self.budget.spent_usd:.4f} of "
                                      f"${self.cfg.budget.max_usd:g}", refresh=False)
        if force or now - getattr(self, "_last_files", 0.0) > 5.0:
            self._last_files = now
            self._write_reports(final=False)
            # Everything alive now (accepted records, the ROUGE index, the ledger) lives until the end: move it out
            # of the cyclic GC's reach, whose full passes over a growing heap otherwise stall the event loop.
            gc.freeze()

    def _write_reports(self, final: bool) -> None:
        with self.proc.lock:
            self._write_reports_locked(final)

    def _write_reports_locked(self, final: bool) -> None:
        led, proc = self.ledger, self.proc
        seconds = time.monotonic() - self.started
        window = (self._last_answer - self._first_send) if self._first_send and self._last_answer else 0.0
        attempts = sum(led.attempts.values())
        stats = {
            "target": self.cfg.num_instructions, "accepted": len(proc.accepted), "done": proc.done,
            "stop_reason": self.stop_reason,
            "requests": {
                "sent": len(led.attempts), "succeeded": len(led.ok), "failed": len(led.gave_up),
                "processed": proc.processed_requests, "attempts": attempts, "retries": attempts - len(led.attempts),
            },
            "attempt_outcomes": dict(sorted(led.outcomes.items())),
            "candidates": {
                "parsed": proc.candidates, "accepted": len(proc.accepted),
                "rejected": dict(sorted(proc.rejected.items())),
                "dropped_blocks": dict(sorted(proc.dropped_blocks.items())),
                "unused_after_target": proc.unused_after_target,
            },
            "this_run": {"seconds": round(seconds, 3), "requests_completed": self.completed_this_run,
                         "attempts": self.attempts_this_run,
                         # from the first request sent to the last answer received (startup excluded)
                         "request_seconds": round(window, 3),
                         "requests_per_s": round(self.completed_this_run / window, 3) if window > 0 else None,
                         "concurrency": self.cfg.concurrency, "recovered": self.recovered},
        }
        cost = {
            "model": self.cfg.api.model, "encoding": self.s.encoding_name,
            "prices_usd_per_1m": {"prompt": self.s.price.prompt_usd_per_1m,
                                  "completion": self.s.price.completion_usd_per_1m, "source": self.s.price.source},
            "spent_usd": self.budget.spent_usd, "spent_tokens": self.budget.spent_tokens,
            "prompt_tokens": led.prompt_tokens, "completion_tokens": led.completion_tokens,
            "charged_worst_case_usd": led.charged_worst_case_usd,
            "budget": {"max_usd": self.cfg.budget.max_usd, "max_tokens": self.cfg.budget.max_tokens},
            "usd_per_accepted": (self.budget.spent_usd / len(proc.accepted)) if proc.accepted else None,
        }
        atomic_write_json(self.out / "stats.json", stats)
        atomic_write_json(self.out / "cost.json", cost)
        if final:
            regen = [alpaca_record(r) for r in proc.accepted]
            # Alpaca's utils.jdump format: indent 4, default ensure_ascii
            atomic_write_bytes(self.out / "regen.json", (json.dumps(regen, indent=4) + "\n").encode("utf-8"))
        self.stats, self.cost = stats, cost

    def run(self) -> dict:
        self._open()
        if self.cfg.progress:
            from tqdm import tqdm
            self._bar = tqdm(total=self.cfg.num_instructions, initial=len(self.proc.accepted), unit="instr",
                             desc="generate", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        try:
            asyncio.run(self._main())
        finally:
            if self._bar is not None:
                self._status(force=True)
                self._bar.close()
                self._bar = None
            self._write_reports(final=True)
            self.journal.close()
            self.accepted_journal.close()
            os.close(self._lock_fd)
        return {"stop_reason": self.stop_reason, "message": self.message, "accepted": len(self.proc.accepted),
                "target": self.cfg.num_instructions, "out_dir": str(self.out), "stats": self.stats,
                "cost": self.cost, "exit_code": EXIT_CODES.get(self.stop_reason or "", 1)}


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def run(cfg: GenerateConfig) -> dict:
    """Generate until num_instructions are accepted (or the budget, max_requests or a signal stops it)."""
    setup = prepare(cfg)
    return Generator(setup).run()


# --------------------------------------------------------------------------------------------------------------
# --dry-run: what the target will cost, counted on the real prompts.


def dry_run(cfg: GenerateConfig) -> dict:
    setup = prepare(cfg, need_key=False)
    k, per_req = cfg.num_prompt_instructions, setup.prompts_per_request
    tasks_per_prompt = cfg.num_tasks - k - 1  # generation stops when task num_tasks begins
    accept_rate, source = cfg.expected_accept_rate, "expected_accept_rate (a prior)"
    stats_path = Path(cfg.out_dir) / "stats.json"
    if stats_path.exists():
        try:
            st = json.loads(stats_path.read_text())
            if st["candidates"]["parsed"] >= 50 and st["accepted"] > 0:
                accept_rate = st["accepted"] / st["candidates"]["parsed"]
                source = f"measured in {cfg.out_dir}"
        except (ValueError, KeyError, TypeError):
            pass
    per_request = tasks_per_prompt * per_req * cfg.api.n * accept_rate
    requests = math.ceil(cfg.num_instructions / per_request)
    if cfg.max_requests is not None:
        requests = min(requests, cfg.max_requests)
    prompt_tokens = 0
    for i in range(requests):
        prompt_tokens += setup.prompt_tokens(setup.prompts(i))
    # completion length: what the seed tasks look like when written in the response format
    enc = setup.enc
    block_tokens = [len(enc.encode(f"###\n4. Instruction: {e.instruction}\n4. Input:\n{e.input or '<noinput>'}\n"
                                   f"4. Output:\n{e.output}\n", disallowed_special=())) for e in setup.seeds]
    per_task = sum(block_tokens) / len(block_tokens)
    completions = requests * per_req * cfg.api.n
    completion_expected = int(completions * min(cfg.api.max_tokens, per_task * tasks_per_prompt))
    completion_worst = completions * cfg.api.max_tokens
    price = setup.price
    expected_usd = price.cost(prompt_tokens, completion_expected)
    worst_usd = price.cost(prompt_tokens, completion_worst)
    return {
        "model": cfg.api.model, "mode": cfg.api.mode, "encoding": setup.encoding_name, "base_url": cfg.api.base_url,
        "target": cfg.num_instructions, "accept_rate": accept_rate, "accept_rate_source": source,
        "tasks_per_prompt": tasks_per_prompt, "requests": requests, "prompts": requests * per_req,
        "prompt_tokens": prompt_tokens, "completion_tokens_expected": completion_expected,
        "completion_tokens_worst": completion_worst, "tokens_per_task": per_task,
        "expected_usd": expected_usd, "worst_usd": worst_usd,
        "price": {"prompt_usd_per_1m": price.prompt_usd_per_1m, "completion_usd_per_1m": price.completion_usd_per_1m,
                  "source": price.source},
        "budget_usd": cfg.budget.max_usd, "budget_tokens": cfg.budget.max_tokens,
        "worst_request_usd": setup.worst_case(setup.prompt_tokens(setup.prompts(0)), per_req).usd,
    }


def format_dry_run(d: dict) -> str:
    lines = [
        f"dry run: {d['model']} ({d['mode']}, tiktoken {d['encoding']}) at {d['base_url']}; no request is sent",
        f"target: {d['target']:,} instructions; {d['tasks_per_prompt']} tasks per prompt, "
        f"{d['accept_rate']:.0%} kept ({d['accept_rate_source']})",
        f"requests: {d['requests']:,} ({d['prompts']:,} prompts)",
        f"prompt tokens: {d['prompt_tokens']:,} (tiktoken, over the real prompts)",
        f"completion tokens: ~{d['completion_tokens_expected']:,} expected "
        f"(~{d['tokens_per_task']:.0f} per task, as the seed tasks), {d['completion_tokens_worst']:,} at most",
        f"cost: ~${d['expected_usd']:,.2f} expected, ${d['worst_usd']:,.2f} at most "
        f"(${d['price']['prompt_usd_per_1m']:g} / ${d['price']['completion_usd_per_1m']:g} per 1M prompt / "
        f"completion tokens, from {d['price']['source']})",
        f"budget: ${d['budget_usd']:,.2f}" + (f", {d['budget_tokens']:,} tokens" if d['budget_tokens'] else "")
        + f"; each request reserves up to ${d['worst_request_usd']:.4f} while in flight",
    ]
    if d["expected_usd"] > d["budget_usd"]:
        lines.append(f"warning: the expected cost exceeds budget.max_usd; the run would stop at about "
                     f"{d['budget_usd'] / d['expected_usd']:.0%} of the target")
    return "\n".join(lines)

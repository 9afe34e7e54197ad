"""A generation run directory: its lock, its ledger's replay, the accepted records, and the reports.

    out_dir/responses.jsonl   the call ledger (api/ledger.py): every attempt, fsync'd before it is sent and as
                              it returns; the batch transport's files and batches too
    out_dir/accepted.jsonl    the records the in-order processor kept, in request order, each written after the
                              ledger holds its source; it stops at the first request without an answer
    out_dir/regen.json        Alpaca's output, written at the end of every run (see `finish`)
    out_dir/stats.json, cost.json, run.json (the settings the output depends on)

Opening one replays the ledger in request order and rebuilds everything from it: spend, the accepted set and
ROUGE index, rejection counts, which requests still need an answer. accepted.jsonl must equal the replay (a torn
last line is cut, records a kill kept from being written are appended), so no record is lost or written twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from alpaca_ds.api.ledger import CallLedger
from alpaca_ds.api.progress import Progress
from alpaca_ds.api.runner import Runner
from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_bytes, atomic_write_json
from alpaca_ds.common.journal import Journal, read_jsonl
from alpaca_ds.common.lock import exclusive
from alpaca_ds.generate.processor import Processor, alpaca_record, process_in_order
from alpaca_ds.generate.result import GenerateResult
from alpaca_ds.generate.setup import Setup, diff_keys

LEDGER = "responses.jsonl"
ACCEPTED = "accepted.jsonl"


class RunDir:
    def __init__(self, setup: Setup):
        self.s = setup
        self.cfg = setup.cfg
        self.out = Path(self.cfg.out_dir)
        self.started = time.monotonic()
        self.skipped = 0  # requests without an answer that `finish` stepped over
        self._lock = exclusive(self.out, "alpaca-ds generate")
        try:
            self._recover()
        except BaseException:
            self._lock.release()
            raise

    def _recover(self) -> None:
        run_json = self.out / "run.json"
        fp = self.s.fingerprint()
        if run_json.exists():
            old = json.loads(run_json.read_text())["fingerprint"]
            if old != fp:
                diff = sorted(diff_keys(old, fp))
                raise UserError(
                    f"{self.out} was generated with different settings ({', '.join(diff)}); a restart "
                    "must use the same ones to continue exactly. Restore them, or use a new out_dir."
                )
        else:
            atomic_write_json(
                run_json, {"fingerprint": fp, "config": json.loads(json.dumps(self.cfg.model_dump(mode="json")))}
            )
        self.ledger = CallLedger(self.out / LEDGER, "i")
        self.max_index = max(self.ledger.keys, default=-1)
        self.proc = Processor(self.s)
        self.next_to_process = process_in_order(self.proc, self.ledger)
        replayed = self.proc.accepted
        on_disk, acc_good = read_jsonl(self.out / ACCEPTED)
        if len(on_disk) > len(replayed):
            extra = (
                "more than num_instructions; raise num_instructions or use a new out_dir"
                if self.proc.done
                else "more than the ledger explains"
            )
            raise UserError(f"{self.out / ACCEPTED} holds {len(on_disk)} records, {extra}")
        for j, rec in enumerate(on_disk):
            if rec != replayed[j]:
                raise UserError(
                    f"{self.out / ACCEPTED}:{j + 1} differs from the replay of {LEDGER} "
                    f"({rec.get('instruction')!r} vs {replayed[j]['instruction']!r}); the files do "
                    "not belong together. Use a new out_dir."
                )
        self.accepted_journal = Journal(self.out / ACCEPTED, acc_good)
        self.accepted_journal.append_many(replayed[len(on_disk) :])
        self.recovered = {
            "accepted_on_disk": len(on_disk),
            "accepted_restored": len(replayed) - len(on_disk),
            "interrupted_attempts": self.ledger.interrupted,
        }

    def runner(self, label: str, **hooks) -> Runner:
        """This run's API runner (its key, ledger, budget and prices) with a progress line named `label`;
        `hooks`: the transport's callbacks (on_stop, on_send, ...)."""
        cfg = self.cfg
        progress = Progress(cfg.num_instructions, label, "instr", initial=len(self.proc.accepted), enabled=cfg.progress)
        return Runner(
            cfg.api, self.s.key, self.ledger, cfg.budget, price=self.s.price, enc=self.s.enc, progress=progress, **hooks
        )

    def accept(self, records: list[dict], requests: int) -> None:
        """Write the records of the next `requests` requests in order (processed) to accepted.jsonl with one
        fsync, and move on past them."""
        self.accepted_journal.append_many(records)
        self.next_to_process += requests

    def finish(self, answered: dict) -> None:
        """A run that stopped short of the target still delivers what it paid for: every answered request after
        the first unanswered one (`answered`: index -> choices) is processed too, in request order, stepping over
        the requests that never got an answer. Those records reach regen.json but not accepted.jsonl, which stays
        the gapless prefix: a rerun answers the gaps and reprocesses everything from the ledger in request order,
        so its regen.json equals an uninterrupted run's."""
        i, last = self.next_to_process, max(self.ledger.keys, default=-1)
        while not self.proc.done and i <= last:
            if i in answered:
                self.proc.process(i, answered[i])
            else:
                self.skipped += 1
            i += 1

    def write_reports(self, runner, this_run: dict, final: bool, wait: bool = True) -> tuple[dict, dict] | None:
        """stats.json, cost.json (and regen.json when `final`) -> (stats, cost); None, writing nothing, when not
        `wait` and the processor is in the middle of a request (whose counters the reports read)."""
        if not self.proc.lock.acquire(blocking=wait):
            return None
        try:
            return self._write_reports(runner, this_run, final)
        finally:
            self.proc.lock.release()

    def _write_reports(self, runner, this_run: dict, final: bool) -> tuple[dict, dict]:
        led, proc = self.ledger, self.proc
        attempts = sum(led.attempts.values())
        stats = {
            "target": self.cfg.num_instructions,
            "accepted": len(proc.accepted),
            "done": proc.done,
            "stop_reason": runner.stop_reason,
            "transport": self.cfg.api.transport,
            "requests": {
                "sent": len(led.attempts),
                "succeeded": len(led.ok),
                "failed": len(led.gave_up),
                "processed": proc.processed_requests,
                "unanswered_skipped": self.skipped,
                "attempts": attempts,
                "retries": attempts - len(led.attempts),
            },
            "attempt_outcomes": dict(sorted(led.outcomes.items())),
            "candidates": {
                "parsed": proc.candidates,
                "accepted": len(proc.accepted),
                "rejected": dict(sorted(proc.rejected.items())),
                "dropped_blocks": dict(sorted(proc.dropped_blocks.items())),
                "unused_after_target": proc.unused_after_target,
            },
            "this_run": {"seconds": round(time.monotonic() - self.started, 3), **this_run, "recovered": self.recovered},
        }
        cost = {
            **runner.cost_report(),
            "encoding": self.s.encoding_name,
            "usd_per_accepted": (runner.budget.spent_usd / len(proc.accepted)) if proc.accepted else None,
        }
        atomic_write_json(self.out / "stats.json", stats)
        atomic_write_json(self.out / "cost.json", cost)
        if final:
            regen = [alpaca_record(r) for r in proc.accepted]
            # Alpaca's utils.jdump format: indent 4, default ensure_ascii
            atomic_write_bytes(self.out / "regen.json", (json.dumps(regen, indent=4) + "\n").encode("utf-8"))
        return stats, cost

    def conclude(self, runner, answered: dict, this_run: dict) -> GenerateResult:
        """The end of a run, whatever stopped it: deliver what was answered (`finish`), write the reports and
        regen.json, and say how it ended."""
        self.finish(answered)
        if self.proc.done and runner.stop_reason != "target":
            # the target was reached by answers processed after the loop had stopped (the budget ran out while
            # processing lagged): the data is complete, and that is how the run ended
            runner.stop_reason, runner.message = "target", f"reached num_instructions = {self.cfg.num_instructions}"
        stats, cost = self.write_reports(runner, this_run, final=True)
        message = runner.message
        if self.skipped:
            message += (
                f" {self.skipped} requests sent but never answered were skipped; every answered one is "
                "in regen.json, and a rerun completes the gaps."
            )
        return GenerateResult(
            stop_reason=runner.stop_reason,
            message=message.strip(),
            accepted=len(self.proc.accepted),
            target=self.cfg.num_instructions,
            out_dir=self.cfg.out_dir,
            stats=stats,
            cost=cost,
            max_usd=self.cfg.budget.max_usd,
            exit_code=runner.exit_code,
        )

    def close(self) -> None:
        self.ledger.close()
        self.accepted_journal.close()
        self._lock.release()

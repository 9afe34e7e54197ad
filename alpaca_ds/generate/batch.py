"""The batch transport of `alpaca-ds generate` (api.transport: batch): requests in waves through the Batch API,
at its price (half the online one at OpenAI), answered within 24 h.

    alpaca-ds generate --config launch/recipes/self_instruct_openai.yaml --set api.transport=batch
    alpaca-ds generate --config ... --set api.transport=batch --cancel-batches      # cancel what is running

Alpaca's prompts depend only on (seed, request index), never on earlier answers, so requests can go out in large
waves. The first wave is sized from the dry run's estimate of accepted instructions per request; each later
wave tops up from the yield measured so far, until num_instructions is reached. Requests whose line failed or
whose batch expired or failed go first in the next wave. As a wave's batches end, their answers are processed
in request order, exactly as online: the same answers per request index give the same regen.json.

A wave is submitted only as far as its worst case at the batch price fits what the budget has left; spend is
settled by the usage in the output files. Every step is in the ledger before the next (api/batch.py), so a rerun
after a kill collects the batches it already has instead of submitting their requests again; Ctrl-C leaves the
batches running and says how to collect or cancel them.
"""

from __future__ import annotations

import math

from alpaca_ds.api.batch import BatchTransport
from alpaca_ds.generate.dryrun import expected_per_request
from alpaca_ds.generate.processor import process_in_order
from alpaca_ds.generate.result import GenerateResult
from alpaca_ds.generate.rundir import RunDir


class BatchGenerator:
    def __init__(self, rd: RunDir, cancel: bool = False):
        self.rd, self.s, self.cfg = rd, rd.s, rd.cfg
        self.cancel = cancel
        self.runner = rd.runner("generate (batch)")
        self.progress = self.runner.progress
        self.submitted = 0
        self.running = 0

    def _process(self) -> None:
        """Process the answered requests, in request order, as far as they go."""
        rd = self.rd
        start, before = rd.next_to_process, len(rd.proc.accepted)
        end = process_in_order(rd.proc, rd.ledger, start)
        rd.accept(rd.proc.accepted[before:], end - start)
        self.progress.update(len(rd.proc.accepted) - before)

    def _wave(self, t: BatchTransport) -> list[int]:
        """The requests of the next wave: every unanswered one below the highest sent (failed lines, expired
        batches, an earlier run's gaps) first, then new ones for the instructions still missing."""
        rd, led, cfg = self.rd, self.rd.ledger, self.cfg
        pending = t.pending
        top = max(led.keys, default=-1)
        gaps = [
            i
            for i in range(rd.next_to_process, top + 1)
            if not led.complete(i) and i not in pending and i not in t.given_up
        ]
        proc = rd.proc
        if proc.processed_requests:
            per_request = len(proc.accepted) / proc.processed_requests
        else:
            per_request = expected_per_request(cfg, self.s.prompts_per_request)
        waiting = len(pending) + len(gaps) + sum(1 for i in range(rd.next_to_process, top + 1) if led.complete(i))
        need = cfg.num_instructions - len(proc.accepted)
        new = max(0, math.ceil(need / max(per_request, 1e-9)) - waiting)
        last = top + 1 + new
        if cfg.max_requests is not None:
            last = min(last, cfg.max_requests)
        wave = gaps + list(range(top + 1, last))
        if cfg.api.batch.max_wave_requests is not None:
            wave = wave[: cfg.api.batch.max_wave_requests]
        return wave

    async def _main(self) -> None:
        rd, runner = self.rd, self.runner
        async with runner:
            t = BatchTransport(
                runner,
                self.s.prompts,
                stop=self.s.stop,
                logit_bias=self.s.logit_bias,
                metadata={"alpaca_ds": "generate", "out_dir": str(rd.out)},
            )
            try:
                await t.check_endpoints()
                await t.resume(create=not self.cancel)
                while not runner.stopping and not self.cancel:
                    self._process()
                    if rd.proc.done:
                        runner.stop("target", f"reached num_instructions = {self.cfg.num_instructions}")
                        self.cancel = bool(t.parts)  # answers past the target would be paid for nothing
                        break
                    wave = self._wave(t)
                    if wave:
                        n = await t.submit(wave)
                        self.submitted += n
                        if n == 0 and not t.parts:
                            runner.stop("budget", runner.budget_message(runner.worst_case(self.s.prompts(wave[0]))))
                            break
                        if n:
                            again = sum(rd.ledger.attempts[i] > 1 for i in wave[:n])
                            self.progress.say(f"wave: {n} requests submitted ({again} of them sent before)")
                    if not t.parts:
                        if not wave:
                            runner.stop("max_requests", f"sent max_requests = {self.cfg.max_requests} requests")
                        continue
                    await t.wait()
                await t.finish(self.cancel)
                self.running = len(t.parts)
            finally:
                await t.close()
                self._process()

    def run(self) -> GenerateResult:
        self.runner.run(self._main())
        led = self.rd.ledger
        answered = {i: led.ok.get(i) for i in led.keys if led.complete(i)}
        return self.rd.conclude(
            self.runner, answered, {"requests_submitted": self.submitted, "batches_running": self.running}
        )

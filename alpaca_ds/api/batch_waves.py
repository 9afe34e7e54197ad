"""Keyed requests (`evaluate`'s) through the Batch API in waves: `run_keyed` drives a BatchTransport (batch.py)
until every request is answered, given up, or the budget or a stop ends the run. `generate` has its own waves
(generate/batch.py).
"""

from __future__ import annotations

from alpaca_ds.api.batch import BatchTransport
from alpaca_ds.common.errors import UserError


async def run_keyed(
    runner, jobs: list, prompts_of, on_answer, metadata: dict | None = None, cancel: bool = False
) -> None:
    """`evaluate`'s requests through the Batch API: every job's request (keyed by what it asks, as online, so
    the ledger serves both transports), in waves as the budget allows, failed lines again first; then
    `on_answer(job, choices)` for every job the ledger has answered."""
    from alpaca_ds.api.runner import request_key

    keyed: dict = {}
    for job in jobs:
        keyed.setdefault(request_key(runner.api, prompts_of(job), None), []).append(job)
    prompts = {k: prompts_of(js[0]) for k, js in keyed.items()}
    led = runner.ledger
    async with runner:
        # a request of an earlier run's batch that this run does not ask (its inputs changed) is still settled,
        # when cancelled: one prompt, as every keyed request has
        t = BatchTransport(runner, lambda k: prompts.get(k, [""]), metadata=metadata)
        foreign = t.pending - set(keyed)
        if foreign and not cancel:
            await t.close()
            raise UserError(
                f"{led.path}: batches of an earlier run hold {len(foreign)} requests this run does not "
                "ask (were the inputs or --limit changed?); rerun with the same inputs to collect them, "
                "or add --cancel-batches to cancel them"
            )
        try:
            await t.check_endpoints()
            await t.resume(create=not cancel)
            while not runner.stopping and not cancel:
                todo = [k for k in keyed if k not in led.ok and k not in t.pending and k not in t.given_up]
                todo.sort(key=lambda k: k not in t.retry)  # failed lines first: their pairs are half paid for
                t.retry.clear()
                if todo and await t.submit(todo) == 0 and not t.parts:
                    runner.stop("budget", runner.budget_message(runner.worst_case(prompts[todo[0]])))
                if not t.parts:
                    break
                await t.wait()
            await t.finish(cancel)
        finally:
            await t.close()
    for k, js in keyed.items():
        if k in led.ok:
            for job in js:
                on_answer(job, led.ok[k])
    runner.end_failures()

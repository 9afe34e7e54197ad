"""The simulator speaks the OpenAI protocol: its Batch API through the official client (files.create, batches
create / retrieve / list / cancel, files.content; output lines shaped as the API's, billed at the batch price,
answers equal to the online ones), and its judge mode reads any layout that labels the two outputs."""

from __future__ import annotations

import asyncio
import json

import pytest

from alpaca_ds.api.budget import Budget, Cost
from alpaca_ds.simulator.batch import BatchBehaviour
from alpaca_ds.simulator.judge import judge_verdict, split_judge_prompt
from alpaca_ds.simulator.local import LocalSimulator
from helpers.generation import seeds_path

MODEL = "gpt-4o-mini"  # priced in the table, with its own batch price (half)


def lines(prompts: list[str]) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": p}]},
            }
        ).encode()
        + b"\n"
        for i, p in enumerate(prompts)
    )


async def _until_done(client, batch_id: str):
    while True:
        b = await client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        await asyncio.sleep(0.05)


def test_batch_endpoints_through_the_official_client():
    from openai import AsyncOpenAI

    prompts = [f"Write a haiku about the number {i}." for i in range(6)]

    async def scenario(url):
        c = AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
        try:
            f = await c.files.create(file=("in.jsonl", lines(prompts)), purpose="batch")
            assert (await c.files.retrieve(f.id)).purpose == "batch"
            b = await c.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "test"}
            )
            assert b.status == "validating" and b.metadata == {"run": "test"}
            listed = [x.id async for x in c.batches.list(limit=10)]
            done = await _until_done(c, b.id)
            out = (await c.files.content(done.output_file_id)).text
            online = [
                await c.chat.completions.create(model=MODEL, max_tokens=200, messages=[{"role": "user", "content": p}])
                for p in prompts
            ]
            other = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
            cancelled = await c.batches.cancel(other.id)
            return b, listed, done, out, online, cancelled, await _until_done(c, other.id)
        finally:
            await c.close()

    with LocalSimulator(seeds_path(), batch=BatchBehaviour(seconds=0.3)) as s:
        b, listed, done, out, online, cancelled, after = asyncio.run(scenario(s.base_url))
        billed = s.stats()["billed_usd"]
    assert b.id in listed and done.status == "completed"
    assert done.request_counts.total == done.request_counts.completed == 6 and done.error_file_id is None
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["custom_id"] for r in rows] == [f"r{i}" for i in range(6)]
    assert all(
        r["error"] is None and r["response"]["status_code"] == 200 and r["id"].startswith("batch_req_") for r in rows
    )
    # the same answers and usage as online, at half the price
    assert [r["response"]["body"]["choices"][0]["message"]["content"] for r in rows] == [
        o.choices[0].message.content for o in online
    ]
    usage = [r["response"]["body"]["usage"] for r in rows]
    assert usage == [o.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) for o in online]
    assert billed["batch"] == pytest.approx(billed["online"] / 2) and billed["batch"] > 0
    assert cancelled.status == "cancelling" and after.status == "cancelled" and after.output_file_id is None


def test_failed_lines_expired_and_failed_batches():
    from openai import AsyncOpenAI

    async def scenario(url):
        c = AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
        try:
            f = await c.files.create(file=("in.jsonl", lines([f"task {i}" for i in range(40)])), purpose="batch")
            ends = []
            for _ in range(3):  # the first fails whole, the second expires half answered, the third has failed lines
                b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
                ends.append(await _until_done(c, b.id))
            errors = [json.loads(x) for x in (await c.files.content(ends[1].error_file_id)).text.splitlines()]
            failed = [json.loads(x) for x in (await c.files.content(ends[2].error_file_id)).text.splitlines()]
            return ends, errors, failed
        finally:
            await c.close()

    with LocalSimulator(
        seeds_path(), batch=BatchBehaviour(seconds=0.05, line_failure=0.3, fail_batches=1, expire_batches=1)
    ) as s:
        ends, expired_lines, failed_lines = asyncio.run(scenario(s.base_url))
    assert [e.status for e in ends] == ["failed", "expired", "completed"]
    assert ends[0].errors.data[0].message and ends[0].output_file_id is None
    expired = [x for x in expired_lines if x["response"] is None and x["error"]["code"] == "batch_expired"]
    assert len(expired) == 20  # the second half; the first half answered (some lines failed)
    assert ends[1].request_counts.completed + len(expired_lines) - len(expired) == 20
    assert 0 < len(failed_lines) < 40 and ends[2].request_counts.failed == len(failed_lines)
    assert all(x["response"]["status_code"] == 500 and x["error"] is None for x in failed_lines)


@pytest.mark.parametrize(
    "layout",
    [
        "## Instruction\n\n{i}\n\n## Output (a)\n\n{a}\n\n## Output (b)\n\n{b}\n\n## Your verdict\n\nReply.",
        "Task: {i}\n\n**Output (a)**\n{a}\n\n**Output (b)**\n{b}\n",
        "Compare the two answers to: {i}\nOutput (a):\n{a}\nOutput (b):\n{b}\nWhich is better?\nAnswer:\n",
    ],
)
def test_judge_mode_reads_any_layout_that_labels_the_outputs(layout):
    good, bad = "Red, green and blue are colours.", "qq zz"
    assert split_judge_prompt(layout.format(i="Name three colours", a=good, b=bad))[1:] == (good, bad, ["a", "b"])
    assert judge_verdict(layout.format(i="Name three colours", a=good, b=bad), []) == "Output (a)"
    assert judge_verdict(layout.format(i="Name three colours", a=bad, b=good), []) == "Output (b)"
    refused = judge_verdict(layout.format(i="Name three colours", a=good, b="NOVERDICT"), [])
    assert refused == "Both answers have merits."  # names neither output: no verdict


def test_a_retry_gets_the_budget_before_new_requests():
    async def scenario():
        b = Budget(max_usd=1.0, max_tokens=None)
        held = b.reserve(Cost(0.7, 0))  # a request in flight
        loop = asyncio.get_running_loop()
        retry = loop.create_task(b.reserve_wait(Cost(0.6, 0), priority=True))
        await asyncio.sleep(0.01)
        assert b.reserve(Cost(0.1, 0)) is None  # there is room, but a retry waits: no new request passes
        newcomer = loop.create_task(b.reserve_wait(Cost(0.2, 0)))
        await asyncio.sleep(0.01)
        b.settle(held, Cost(0.3, 0))  # room for one of them (0.7): the retry, though it came first
        got_retry = await retry
        await asyncio.sleep(0.01)
        waiting = not newcomer.done()
        b.settle(got_retry, Cost(0.2, 0))  # the retry settles; now the newcomer fits
        return got_retry, waiting, await newcomer

    got_retry, newcomer_waited, got_new = asyncio.run(scenario())
    assert got_retry == Cost(0.6, 0) and newcomer_waited and got_new == Cost(0.2, 0)

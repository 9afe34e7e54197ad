"""The Batch API transport (api.transport: batch) against the simulator's /v1/files and /v1/batches, through the
official openai client over a real socket: the same regen.json as online at half the price, failed lines and an
expired batch sent again, SIGKILLs at random moments without a request in two batches, a server without the
Batch API refused before anything is spent, and judging with the same annotations as online."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.journal import read_jsonl
from alpaca_ds.evaluate import judge
from alpaca_ds.generate import run as gen
from alpaca_ds.simulator.batch import BatchBehaviour
from alpaca_ds.simulator.local import LocalSimulator
from helpers.generation import Teacher, cli_env, gen_config, overrides, seeds_path
from helpers.judge import ENV, make_pairs, start_judge
from helpers.judge import config as judge_config
from helpers.paths import ROOT

BATCH = ("api.transport=batch", "api.batch.poll_s=0.05")


def ledger(out) -> list[dict]:
    return read_jsonl(out / gen.LEDGER)[0]


def simulator(**batch) -> LocalSimulator:
    return LocalSimulator(seeds_path(), batch=BatchBehaviour(**{"seconds": 0.1, **batch}))


@pytest.mark.slow
def test_batch_generation_equals_online_at_half_the_price(tmp_path):
    online, batch = tmp_path / "online", tmp_path / "batch"
    with simulator() as s:
        first = gen.run(gen_config(online, s.base_url, "num_instructions=2000"))
        sent = json.loads((online / "stats.json").read_text())["requests"]["sent"]
        # the batch run may buy no more answers than the online run did, so the two bills compare directly
        second = gen.run(gen_config(batch, s.base_url, "num_instructions=2000", *BATCH, f"max_requests={sent}"))
        billed = s.stats()["billed_usd"]
    assert first.stop_reason == second.stop_reason == "target"
    assert (online / "regen.json").read_bytes() == (batch / "regen.json").read_bytes()
    assert len(json.loads((batch / "regen.json").read_text())) == 2000
    cost_online = json.loads((online / "cost.json").read_text())
    cost_batch = json.loads((batch / "cost.json").read_text())
    assert cost_batch["transport"] == "batch" and cost_batch["prompt_tokens"] == cost_online["prompt_tokens"]
    assert cost_batch["spent_usd"] == pytest.approx(cost_online["spent_usd"] / 2, rel=1e-9)
    # what each side paid is what the server billed it
    assert cost_online["spent_usd"] == pytest.approx(billed["online"], rel=1e-9)
    assert cost_batch["spent_usd"] == pytest.approx(billed["batch"], rel=1e-9)


def test_failed_lines_and_an_expired_batch_are_sent_again_and_end_answered(tmp_path):
    with simulator(line_failure=0.2, expire_batches=1, fail_batches=1) as s:
        result = gen.run(gen_config(tmp_path / "b", s.base_url, "num_instructions=300", *BATCH))
        stats = s.stats()
    assert result.stop_reason == "target"
    assert stats["batches"]["by_status"]["failed"] == 1 and stats["batches"]["by_status"]["expired"] == 1
    results = [e for e in ledger(tmp_path / "b") if e["t"] == "result"]
    kinds = {e["kind"] for e in results}
    assert {"batch_failed", "expired", "server_error", "ok"} <= kinds
    failed = {e["i"] for e in results if e["kind"] != "ok"}
    answered = {e["i"] for e in results if e["kind"] == "ok"}
    processed = json.loads((tmp_path / "b" / "stats.json").read_text())["requests"]["processed"]
    assert failed and all(i in answered for i in failed if i < processed)  # each was sent again until answered
    with simulator() as s:  # the same answers online, without faults
        gen.run(gen_config(tmp_path / "o", s.base_url, "num_instructions=300"))
    assert (tmp_path / "b" / "regen.json").read_bytes() == (tmp_path / "o" / "regen.json").read_bytes()


def test_a_server_without_the_batch_api_is_refused_before_anything_is_spent(tmp_path):
    with LocalSimulator(seeds_path(), batch=None) as s:
        with pytest.raises(UserError, match="serves no Batch API.*api.transport: online"):
            gen.run(gen_config(tmp_path / "g", s.base_url, "num_instructions=50", *BATCH))
        assert not s.sim.counts and s.stats()["billed_usd"] == {"online": 0.0, "batch": 0.0}
    assert not ledger(tmp_path / "g")


@pytest.mark.slow
def test_three_sigkills_at_random_moments_lose_nothing_and_submit_nothing_twice(tmp_path):
    out = tmp_path / "g"
    # ~600 small requests in waves of 24, 6 to a file: a run of ~25 waves, each ~0.4 s at the API
    args = (
        "num_instructions=1500",
        "api.prompts_per_request=1",
        "num_tasks=8",
        "api.max_tokens=700",
        *BATCH,
        "api.batch.max_requests_per_file=6",
        "api.batch.max_wave_requests=24",
        "budget.max_usd=3",
    )
    command = [
        sys.executable,
        "-m",
        "alpaca_ds.cli",
        "generate",
        *[x for o in overrides(out, "URL", *args) for x in ("--set", o)],
    ]
    rng = random.Random(os.getpid())
    with Teacher("--batch-seconds", "0.3") as teacher:
        command = [c.replace("URL", teacher.url) for c in command]
        open_parts = []
        for _ in range(3):
            before = len(ledger(out))
            proc = subprocess.Popen(
                command, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.time() + 120
            while len(ledger(out)) <= before:  # the run is under way: its first line
                assert proc.poll() is None and time.time() < deadline
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5))  # then somewhere in uploads, creates, polls, downloads
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
            steps = [e for e in ledger(out) if e["t"] in ("upload", "batch_end")]
            open_parts.append(sum(1 if e["t"] == "upload" else -1 for e in steps))
        assert any(open_parts), open_parts  # the kills left parts half way (uploaded, running, downloading)
        final = subprocess.run(command, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
        served = teacher.stats()
    assert final.returncode == 0, final.stderr[-3000:]
    cfg = gen_config(out, teacher.url, *args)
    accepted = [json.loads(x) for x in (out / "accepted.jsonl").read_text().splitlines()]
    replayed = gen.Processor(gen.prepare(cfg, need_key=False))
    from alpaca_ds.api.ledger import CallLedger

    gen.process_in_order(replayed, CallLedger(out / gen.LEDGER, "i", writable=False))
    assert accepted == replayed.accepted and len(accepted) == 1500  # nothing lost, nothing written twice
    seen = [c for ids in served["batches"]["custom_ids"].values() for c in ids]
    assert len(seen) == len(set(seen))  # no request in two batches
    entries = ledger(out)
    results = [e for e in entries if e["t"] == "result"]
    assert len(results) == len({e["i"] for e in results}) == len(seen)  # one settled line per request sent
    spent = json.loads((out / "cost.json").read_text())["spent_usd"]
    assert spent == pytest.approx(sum(e["usd"] for e in results))
    assert served["billed_usd"]["batch"] - 1e-9 <= spent <= 3.0


def test_judge_in_batch_gives_the_online_annotations_at_half_the_price(tmp_path):
    a, b, expected = make_pairs(tmp_path, 20)
    os.environ.update(ENV)
    try:
        with simulator(line_failure=0.2) as s:
            online = judge.run(judge_config(a, b, s.base_url, tmp_path / "online"))
            batch = judge.run(judge_config(a, b, s.base_url, tmp_path / "batch", *BATCH))
            again = judge.run(judge_config(a, b, s.base_url, tmp_path / "batch", *BATCH))
    finally:
        os.environ.pop("JUDGE_TEST_KEY")
    assert online.exit_code == batch.exit_code == 0 and again.calls == 0
    assert (tmp_path / "online" / "annotations.json").read_bytes() == (
        tmp_path / "batch" / "annotations.json"
    ).read_bytes()
    assert [x["preference"] for x in json.loads((tmp_path / "batch" / "annotations.json").read_text())] == expected
    assert batch.cost["spent_usd"] == pytest.approx(online.cost["spent_usd"] / 2, rel=1e-9)


@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_weighted_judge_in_batch_gives_the_online_annotations(tmp_path, mode):
    """The log-probabilities come back in the batch's output lines too, and are kept in the ledger."""
    a, b, _ = make_pairs(tmp_path, 15)
    weighted = ("mode=weighted", f"api.mode={mode}")
    os.environ.update(ENV)
    try:
        with simulator(line_failure=0.2) as s:
            online = judge.run(judge_config(a, b, s.base_url, tmp_path / "online", *weighted))
            batch = judge.run(judge_config(a, b, s.base_url, tmp_path / "batch", *weighted, *BATCH))
            again = judge.run(judge_config(a, b, s.base_url, tmp_path / "batch", *weighted, *BATCH))
            assert s.stats()["batches"]["created"] >= 2  # failed lines went into a second wave
    finally:
        os.environ.pop("JUDGE_TEST_KEY")
    assert online.exit_code == batch.exit_code == 0 and again.calls == 0
    assert batch.judge["calls_by_source"] == online.judge["calls_by_source"] == {"logprobs": 24, "verdict": 6}
    assert (tmp_path / "online" / "annotations.json").read_bytes() == (
        tmp_path / "batch" / "annotations.json"
    ).read_bytes()
    assert batch.cost["spent_usd"] == pytest.approx(online.cost["spent_usd"] / 2, rel=1e-9)


@pytest.mark.parametrize("cut", ["file", "batch", "results"])
def test_a_rerun_after_a_crash_collects_the_batch_it_has(tmp_path, cut):
    """The ledger of a finished one-batch run, cut as a kill would leave it: after the file was recorded (the batch
    was created but not recorded), after the batch was recorded, or half way through settling its lines. A
    rerun finds or polls that batch and settles it; it submits nothing again and ends with the same output."""
    out = tmp_path / "g"
    args = ("num_instructions=60", *BATCH)
    with simulator() as s:
        gen.run(gen_config(out, s.base_url, *args))
        assert s.stats()["batches"]["created"] == 1
        whole = (out / "regen.json").read_bytes()
        lines = (out / gen.LEDGER).read_text().splitlines(keepends=True)
        kinds = [json.loads(x)["t"] for x in lines]
        keep = {
            "file": kinds.index("file") + 1,
            "batch": kinds.index("batch") + 1,
            "results": kinds.index("batch") + 1 + (kinds.count("result") // 2),
        }[cut]
        (out / gen.LEDGER).write_text("".join(lines[:keep]))
        for name in ("accepted.jsonl", "regen.json", "stats.json", "cost.json"):
            (out / name).unlink()
        again = gen.run(gen_config(out, s.base_url, *args))
        assert s.stats()["batches"]["created"] == 1  # found (or polled) again, not created again
    assert again.stop_reason == "target" and (out / "regen.json").read_bytes() == whole
    results = [e for e in ledger(out) if e["t"] == "result"]
    assert len(results) == len({e["i"] for e in results}) == kinds.count("result")  # each line settled once


@pytest.mark.slow
def test_ctrl_c_leaves_the_batches_running_and_cancel_batches_cancels_them(tmp_path):
    out = tmp_path / "g"
    args = [x for o in overrides(out, "URL", "num_instructions=100", *BATCH) for x in ("--set", o)]
    with Teacher("--batch-seconds", "60") as teacher:
        command = [sys.executable, "-m", "alpaca_ds.cli", "generate", *[a.replace("URL", teacher.url) for a in args]]
        proc = subprocess.Popen(
            command, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 60
        while not any(e["t"] == "batch" for e in ledger(out)):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "still running at the API" in err and "--cancel-batches" in err
        running = teacher.stats()["batches"]["by_status"]
        assert set(running) == {"in_progress"}
        online = subprocess.run(
            [*command, "--set", "api.transport=online"],
            cwd=ROOT,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert online.returncode != 0 and "may still be answered; rerun with api.transport: batch" in online.stderr
        assert teacher.stats()["requests"] == 0  # refused before sending anything online
        cancel = subprocess.run(
            [*command, "--cancel-batches"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120
        )
        assert cancel.returncode == 0, cancel.stderr
        assert teacher.stats()["batches"]["by_status"] == {"cancelled": running["in_progress"]}
    ends = [e for e in ledger(out) if e["t"] == "batch_end"]
    assert ends and all(e["status"] == "cancelled" for e in ends)
    cancelled = [e for e in ledger(out) if e["t"] == "result"]
    assert cancelled and all(e["kind"] == "cancelled" and e["usd"] == 0 for e in cancelled)


def test_a_lost_create_answer_and_flaky_calls_neither_stop_the_run_nor_duplicate_a_batch(tmp_path):
    """The first create makes its batch but answers 500 (the answer lost on the way); the first calls answer 503.
    The run retries, finds the batch the lost create made instead of making another, and ends as online."""
    with simulator(lost_creates=1, flaky_calls=3) as s:
        result = gen.run(gen_config(tmp_path / "b", s.base_url, "num_instructions=300", *BATCH))
        stats = s.stats()
        gen.run(gen_config(tmp_path / "o", s.base_url, "num_instructions=300"))
    assert result.stop_reason == "target"
    parts = [e for e in ledger(tmp_path / "b") if e["t"] == "batch"]
    assert stats["batches"]["created"] == len(parts)  # not one more
    seen = [c for ids in stats["batches"]["custom_ids"].values() for c in ids]
    assert len(seen) == len(set(seen))
    assert (tmp_path / "b" / "regen.json").read_bytes() == (tmp_path / "o" / "regen.json").read_bytes()


def test_input_files_stay_within_the_size_and_count_limits(tmp_path):
    with simulator() as s:
        result = gen.run(
            gen_config(
                tmp_path / "b",
                s.base_url,
                "num_instructions=300",
                *BATCH,
                "api.batch.max_file_mb=0.04",
                "api.batch.max_requests_per_file=3",
            )
        )
        files = [f for f in s.sim.batch.files.values() if f["purpose"] == "batch"]
        inputs = [s.sim.batch.content[f["id"]] for f in files]
    assert result.stop_reason == "target" and len(files) > 2
    assert all(len(data) <= 40_000 and data.count(b"\n") <= 3 for data in inputs)
    assert sum(data.count(b"\n") for data in inputs) == result.stats["requests"]["attempts"]


def test_judge_batches_left_running_are_collected_with_the_same_inputs_only(tmp_path):
    """A judge run in batch is interrupted with its batch running; a rerun on other inputs (--limit) is refused,
    naming what to do, before it spends anything; --cancel-batches then cancels the batch."""
    a, b, _ = make_pairs(tmp_path, 6)
    out = tmp_path / "j"
    with LocalSimulator(seeds_path(), batch=BatchBehaviour(seconds=60)) as s:
        proc = start_judge(a, b, s.base_url, out, *BATCH)
        deadline = time.time() + 60
        while not any(e["t"] == "batch" for e in read_jsonl(out / "calls.jsonl")[0]):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "--cancel-batches" in err, err
        os.environ.update(ENV)
        try:
            with pytest.raises(UserError, match="6 requests this run does not ask.*--cancel-batches"):
                judge.run(judge_config(a, b, s.base_url, out, *BATCH, "limit=3"))
            cancelled = judge.run(judge_config(a, b, s.base_url, out, *BATCH, "limit=3"), cancel_batches=True)
        finally:
            os.environ.pop("JUDGE_TEST_KEY")
        assert s.stats()["batches"]["by_status"] == {"cancelled": 1} and s.stats()["billed_usd"]["batch"] == 0
    assert cancelled.exit_code == 0 and cancelled.stop_reason == "cancelled" and cancelled.judged == 0

"""The weighted judge (mode: weighted) against the simulator over a real socket, through the official client:
preferences equal to what the simulator's log-probabilities say, in chat and completions, in both orders; the
fallback to the reply's verdict when the endpoint gives no log-probabilities; SIGKILL and a rerun paying nothing
twice, what the ledger spent being what the simulator billed."""

from __future__ import annotations

import json
import math
import os
import signal
import time

import pytest

from alpaca_ds.api.prices import Price
from alpaca_ds.common.journal import read_jsonl
from alpaca_ds.evaluate import judge
from helpers.evaluation import simulator
from helpers.judge import ENV, config, ledger_results, make_pairs, run_judge, start_judge

WEIGHTED = "mode=weighted"


def first_token_top(logprobs: dict, chat: bool) -> dict[str, float]:
    """The first generated token's top log-probabilities, read from the wire shape the simulator returned."""
    if chat:
        return {e["token"]: e["logprob"] for e in logprobs["content"][0]["top_logprobs"]}
    return logprobs["top_logprobs"][0]


def p_second(top: dict[str, float]) -> float | None:
    """P(M) / (P(m) + P(M)): "m" names the output shown first, "M" the second; None when neither is there."""
    pm, pM = (math.exp(top[t]) if t in top else 0.0 for t in ("m", "M"))
    return None if pm + pM == 0 else pM / (pm + pM)


def expected_preferences(cfg, sim, chat: bool) -> list:
    """Per pair, the mean over both orders of 1 + P(output_2 better), from what the simulator returned."""
    j = judge.Judge(cfg)
    out = []
    for pair in j.pairs:
        prefs = []
        for order in (0, 1):
            top = first_token_top(sim.logprobs_returned[j.prompt(pair, order)], chat)
            p = p_second(top)
            if p is not None:  # order 0 shows output_1 first: P(M) is P(output_2 better); order 1 the reverse
                prefs.append(1 + p if order == 0 else 2 - p)
        out.append(sum(prefs) / len(prefs) if prefs else None)
    return out


@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_preferences_are_the_simulators_log_probabilities(tmp_path, mode):
    a, b, discrete = make_pairs(tmp_path, 20)
    out = tmp_path / mode
    os.environ.update(ENV)
    try:
        with simulator() as s:
            cfg = config(a, b, s.base_url, out, WEIGHTED, f"api.mode={mode}")
            result = judge.run(cfg)
            expected = expected_preferences(cfg, s.sim, mode == "chat")
            assert len(s.sim.logprobs_returned) == 40
        with simulator() as s:  # the ledger kept the log-probabilities: a rerun replays them, paying nothing
            again = judge.run(config(a, b, s.base_url, out, WEIGHTED, f"api.mode={mode}"))
            assert not s.sim.answered and again.calls == 0 and again.from_ledger == 40
    finally:
        os.environ.pop("JUDGE_TEST_KEY")
    annotations = json.loads((out / "annotations.json").read_text())
    got = [x["preference"] for x in annotations]
    assert got == [pytest.approx(e) if e is not None else None for e in expected]
    assert len({round(p, 6) for p in got if p is not None} - {1, 1.5, 2}) >= 3  # probabilities, not verdicts
    # the same side wins as with discrete verdicts; a refusal (no m or M in the top 5) falls back to its verdict
    for g, d, x in zip(got, discrete, annotations):
        if d is None:
            assert g is None and x["preference_source"] == "verdict" and x["raw_completion"] == ["Both", "Both"]
        else:
            assert (g > 1.5) == (d > 1.5) and (g < 1.5) == (d < 1.5) and x["preference_source"] == "logprobs"
    assert result.judge == {"mode": "weighted", "calls_by_source": {"logprobs": 32, "verdict": 8}, "no_verdict": 8}
    calls = [e for e in read_jsonl(out / "calls.jsonl")[0] if e["t"] == "result"]
    assert all(len(e["choices"][0]["top_logprobs"][0]) == 5 for e in calls)  # asked for the top 5, kept
    report = (out / "winrate.md").read_text()
    assert "preferences from log-probabilities for 32 of 40 calls; **8 fell back" in report
    assert "| length-controlled |" in report  # LC beside the raw rate
    rep = json.loads((out / "winrate.json").read_text())
    assert rep["overall"]["win_rate"] == pytest.approx(100 * sum(p - 1 for p in got if p) / 16)


@pytest.mark.slow
def test_without_log_probabilities_the_verdict_is_used_and_reported(tmp_path):
    a, b, discrete = make_pairs(tmp_path, 15)
    out = tmp_path / "fallback"
    with simulator(logprobs=False) as s:
        r = run_judge(a, b, s.base_url, out, WEIGHTED)
        assert s.sim.logprobs_returned == {} and len(s.sim.answered) == 30
    assert r.returncode == 0, r.stderr[-2000:]
    assert "30 of 30 calls had no log-probabilities for m/M and fell back to the verdict" in r.stdout
    assert "length-controlled" in r.stdout
    annotations = json.loads((out / "annotations.json").read_text())
    assert [x["preference"] for x in annotations] == discrete  # the m / M replies, read as verdicts
    assert {x["preference_source"] for x in annotations} == {"verdict"}
    assert all(x["top_logprobs"] == [None, None] for x in annotations)
    assert "**30 fell back to the discrete verdict**" in (out / "winrate.md").read_text()


@pytest.mark.slow
def test_sigkill_and_rerun_pay_nothing_twice(tmp_path):
    """Completions mode, one call at a time: a call's worst case (its prompt + 1 token) is exactly what the
    simulator bills, so the ledger's spend must equal the bill even with a call cut off by the kill."""
    a, b, _ = make_pairs(tmp_path, 15)
    out = tmp_path / "killed"
    extra = (WEIGHTED, "api.mode=completions", "concurrency=1")
    with simulator(latency=0.3, price=Price(1000, 1000, "test")) as s:
        proc = start_judge(a, b, s.base_url, out, *extra)
        deadline = time.time() + 120
        while True:  # kill once a call is on the wire and answered by the server, its result not yet recorded
            answered = sum(s.sim.answered.values())  # read first: an answer is on record only after it
            ok = len([e for e in ledger_results(out) if e["kind"] == "ok"]) if (out / "calls.jsonl").exists() else 0
            if ok >= 6 and answered == ok + 1:
                break
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        rerun = run_judge(a, b, s.base_url, out, *extra)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert f"{ok} from the ledger" in rerun.stdout
    os.environ.update(ENV)
    try:
        with simulator() as fresh:  # the same judging, uninterrupted
            whole = judge.run(config(a, b, fresh.base_url, tmp_path / "whole", *extra))
    finally:
        os.environ.pop("JUDGE_TEST_KEY")
    assert whole.exit_code == 0
    assert (out / "annotations.json").read_bytes() == (tmp_path / "whole" / "annotations.json").read_bytes()
    results = ledger_results(out)
    interrupted = [r for r in results if r["kind"] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["charged"] == "worst_case"
    # every prompt answered once, but the call cut off by the kill: the server had answered (and billed) it
    assert len(s.sim.answered) == 30 and sum(s.sim.answered.values()) == 31
    spent = json.loads((out / "cost.json").read_text())["spent_usd"]
    assert spent == pytest.approx(s.stats()["billed_usd"]["online"], rel=1e-9)
    assert spent == pytest.approx(sum(r["usd"] for r in results), rel=1e-9)

"""`alpaca-ds evaluate judge` against the simulator's judge mode over a real socket (the OpenAI protocol, the
official client): verdicts in both orders, AlpacaEval's annotation shape, retries, the hard budget, and resuming
after SIGKILL and Ctrl-C without paying twice."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from alpaca_ds.api.runner import request_key
from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config
from alpaca_ds.evaluate import judge
from alpaca_ds.evaluate.config import JudgeConfig
from alpaca_ds.simulator.batch import BatchBehaviour
from alpaca_ds.simulator.server import Faults
from helpers.evaluation import simulator, write_outputs
from helpers.judge import ENV, SECRET, config, ledger_results, make_pairs, run_judge, start_judge


def test_verdict_parsing_and_combining():
    assert judge.parse_verdict("Output (a)") == "a"
    assert judge.parse_verdict("  output (B).") == "b"
    assert judge.parse_verdict("Output (a) is better than Output (b)") is None
    assert judge.parse_verdict("Neither") is None and judge.parse_verdict("") is None
    # P(the output shown second is better) per order: order 0 shows output_1 first, order 1 output_2
    assert judge.combine([0.0, 1.0]) == 1 and judge.combine([1.0, 0.0]) == 2
    assert judge.combine([0.0, 0.0]) == 1.5 and judge.combine([1.0, 1.0]) == 1.5
    assert judge.combine([None, 0.0]) == 2 and judge.combine([None, None]) is None
    assert judge.combine([0.25, 0.5]) == pytest.approx(((1 + 0.25) + (2 - 0.5)) / 2)
    # the weighted judge's P(M) / (P(m) + P(M)); a token missing from the top 5 has probability 0
    assert judge.second_share([{"m": math.log(0.2), "M": math.log(0.6), "Both": -1.0}]) == pytest.approx(0.75)
    assert judge.second_share([{"m": -0.1, "The": -3.0}]) == 0.0 and judge.second_share([{"M": -9.0}]) == 1.0
    assert judge.second_share([{"Both": -0.1}]) is None and judge.second_share(None) is None
    # a placeholder written inside an answer is not expanded
    text = judge.render(judge.load_template(None), "say {output_b}", "{instruction}", "b")
    assert "say {output_b}" in text and "## Output (a)\n\n{instruction}\n" in text


def test_judge_annotations_retries_cache_and_no_secret(tmp_path):
    a, b, expected = make_pairs(tmp_path, 20)
    out = tmp_path / "judged"
    os.environ.update(ENV)
    try:
        # every first attempt gets a 429: each call is retried once
        with simulator(faults=Faults(fail_first=1, retry_after=0)) as s:
            result = judge.run(config(a, b, s.base_url, out))
            assert set(s.sim.answered.values()) == {1} and len(s.sim.answered) == 40
            assert set(s.sim.seen.values()) == {2}
            assert s.sim.keys == {f"Bearer {SECRET}"}
        with simulator() as s:  # a rerun is served from the ledger: no call at all, same file
            before = (out / "annotations.json").read_bytes()
            again = judge.run(config(a, b, s.base_url, out))
            assert not s.sim.answered and again.calls == 0 and again.from_ledger == 40
            assert (out / "annotations.json").read_bytes() == before
    finally:
        os.environ.pop("JUDGE_TEST_KEY")
    assert result.exit_code == 0 and result.judged == 20
    annotations = json.loads((out / "annotations.json").read_text())
    assert [x["preference"] for x in annotations] == expected
    first = annotations[0]
    assert {
        "instruction",
        "output_1",
        "output_2",
        "generator_1",
        "generator_2",
        "dataset",
        "annotator",
        "preference",
    } <= set(first)
    assert (first["generator_1"], first["generator_2"]) == ("model_a", "model_b")
    assert len(first["raw_completion"]) == 2 and result.no_verdict_replies == 8
    # cost: the API's usage at the configured price, every 429 free
    results = ledger_results(out)
    ok = [r for r in results if r["kind"] == "ok"]
    assert len(ok) == 40 and all(r["charged"] == "usage" for r in ok)
    assert all(r["charged"] == "none" for r in results if r["kind"] == "rate_limited")
    cost = json.loads((out / "cost.json").read_text())
    assert cost["spent_usd"] == pytest.approx(sum(r["usd"] for r in results))
    assert cost["spent_usd"] == pytest.approx(sum(sum(r["usage"]) for r in ok) * 1000 / 1e6)
    # the report: 8 wins of B, 4 of A, 4 ties, 4 without a verdict
    rep = json.loads((out / "winrate.json").read_text())["overall"]
    assert (rep["n_wins"], rep["n_wins_base"], rep["n_draws"], rep["n_total"], rep["n_dropped"]) == (8, 4, 4, 16, 4)
    assert rep["win_rate"] == pytest.approx(100 * (8 + 0.5 * 4) / 16)
    for path in out.iterdir():  # the key reaches no file
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_budget_stops_within_it_and_a_rerun_pays_only_the_rest(tmp_path):
    a, b, expected = make_pairs(tmp_path, 15)
    out = tmp_path / "budget"
    os.environ.update(ENV)
    try:
        with simulator() as s:
            # each call costs ~0.06-0.1 $ at these prices, and reserves up to ~0.12 $: room for a few only
            cfg = config(a, b, s.base_url, out, "budget.max_usd=0.8", "concurrency=3")
            result = judge.run(cfg)
            first_calls = sum(s.sim.answered.values())
        assert result.stop_reason == "budget" and result.exit_code == 3
        spent = json.loads((out / "cost.json").read_text())["spent_usd"]
        assert 0 < spent <= 0.8 and 0 < first_calls < 30
        assert result.judged < 15
        with simulator() as s:
            result = judge.run(config(a, b, s.base_url, out, "budget.max_usd=100"))
            assert sum(s.sim.answered.values()) == 30 - first_calls  # nothing paid twice
    finally:
        os.environ.pop("JUDGE_TEST_KEY")
    assert result.exit_code == 0
    assert [x["preference"] for x in json.loads((out / "annotations.json").read_text())] == expected


def _wait_results(out: Path, proc: subprocess.Popen, at_least: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "calls.jsonl").exists() and len(ledger_results(out)) >= at_least:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the judge made no progress")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
@pytest.mark.slow
def test_killed_or_interrupted_run_resumes_to_the_same_result(tmp_path, how):
    a, b, expected = make_pairs(tmp_path, 30)
    out = tmp_path / how
    with simulator(latency=0.15) as s:
        proc = start_judge(a, b, s.base_url, out)
        _wait_results(out, proc, 12)
        if how == "SIGKILL":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGINT)  # graceful: the calls in flight finish and are recorded
        _, err = proc.communicate(timeout=60)
        if how == "SIGINT":
            assert proc.returncode == 130, err
            assert "interrupted" in err
        done_before = len([r for r in ledger_results(out) if r["kind"] == "ok"])
        assert done_before < 60
        rerun = run_judge(a, b, s.base_url, out)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert "30/30 pairs judged" in rerun.stdout and f"{done_before} from the ledger" in rerun.stdout
    annotations = json.loads((out / "annotations.json").read_text())
    assert [x["preference"] for x in annotations] == expected  # the same result as an uninterrupted run
    assert len(s.sim.answered) == 60  # every prompt answered
    results = ledger_results(out)
    interrupted = [r for r in results if r["kind"] == "interrupted"]
    duplicates = sum(s.sim.answered.values()) - len(s.sim.answered)
    if how == "SIGINT":
        assert duplicates == 0 and not interrupted  # nothing was left in flight
    else:
        # only calls that were on the wire at the kill can be sent again; they are charged their worst case
        assert duplicates <= len(interrupted)
        assert all(r["charged"] == "worst_case" and r["usd"] > 0 for r in interrupted)
    cost = json.loads((out / "cost.json").read_text())
    assert cost["spent_usd"] == pytest.approx(sum(r["usd"] for r in results)) and cost["spent_usd"] <= 100


def test_errors_before_any_call(tmp_path):
    a, b, _ = make_pairs(tmp_path, 5)
    with simulator() as s:
        with pytest.raises(UserError, match="JUDGE_TEST_KEY"):
            judge.run(config(a, b, s.base_url, tmp_path / "x"))  # the key's variable is not set
        os.environ.update(ENV)
        try:
            with pytest.raises(UserError, match="no price for model 'judge-sim'"):
                judge.run(
                    load_config(
                        JudgeConfig,
                        None,
                        [
                            f"a={a}",
                            f"b={b}",
                            f"out_dir={tmp_path / 'y'}",
                            f"api.base_url={s.base_url}",
                            "api.model=judge-sim",
                            "api.api_key_env=JUDGE_TEST_KEY",
                        ],
                    )
                )
            other = write_outputs(
                tmp_path / "other.json", json.loads(b.read_text())[:2] + [{"instruction": "unrelated", "output": "x"}]
            )
            with pytest.raises(UserError, match="answer different instructions: 2 in common, 3 only in the first"):
                judge.run(config(a, other, s.base_url, tmp_path / "z"))
        finally:
            os.environ.pop("JUDGE_TEST_KEY")
        assert not s.sim.seen


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["online", "batch"])
def test_a_stop_delivers_every_paid_verdict_and_a_rerun_equals_an_uninterrupted_run(tmp_path, transport):
    """Pairs 3, 8, 13, ... always fail (the simulator fails their prompts); the budget stops the run while they
    are being retried. Every pair whose two verdicts were paid for is annotated; a rerun with a larger budget
    ends as an uninterrupted run does (those pairs left out, exit 4), with the same annotations."""
    a, b, expected = make_pairs(tmp_path, 30)
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    extra = (
        "api.max_retries=8",
        "api.backoff_initial_s=0.1",
        "api.backoff_max_s=0.2",
        "concurrency=6",
        f"api.transport={transport}",
        "api.batch.poll_s=0.05",
    )
    budget = {"online": 2, "batch": 1}[transport]  # the batch price is half
    os.environ.update(ENV)
    try:
        with simulator(
            latency=0.02, faults=Faults(fail_matching=r"Task \d*[38]:"), batch=BatchBehaviour(seconds=0.05)
        ) as s:
            first = judge.run(config(a, b, s.base_url, stopped, *extra, f"budget.max_usd={budget}"))
            assert first.stop_reason == "budget"
            paid = {r["k"] for r in ledger_results(stopped) if r["kind"] == "ok"}
            annotated = json.loads((stopped / "annotations.json").read_text())
            assert 0 < len(annotated) < 24
            resumed = judge.run(config(a, b, s.base_url, stopped, *extra))
            uninterrupted = judge.run(config(a, b, s.base_url, whole, *extra))
        j = judge.Judge(config(a, b, "http://unused", stopped))
    finally:
        os.environ.pop("JUDGE_TEST_KEY")
    # every pair both of whose calls the ledger holds answered is in the stopped run's annotations, and only those
    both = [
        p.instruction for p in j.pairs if all(request_key(j.cfg.api, [j.prompt(p, o)], None) in paid for o in (0, 1))
    ]
    assert [x["instruction"] for x in annotated] == both
    assert resumed.exit_code == uninterrupted.exit_code == 4 and resumed.judged == 24
    assert (stopped / "annotations.json").read_bytes() == (whole / "annotations.json").read_bytes()
    assert [x["preference"] for x in json.loads((whole / "annotations.json").read_text())] == [
        p for i, p in enumerate(expected) if i % 5 != 3
    ]

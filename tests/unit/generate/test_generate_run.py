"""`alpaca-ds generate` end to end against the teacher simulator over a real socket: outputs, determinism at any
concurrency, the budget, errors before any request, secrets, Ctrl-C, and SIGKILLs at random moments."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from alpaca_ds.api.calls import backoff_delay
from alpaca_ds.api.ledger import CallLedger
from alpaca_ds.common.errors import UserError
from alpaca_ds.common.journal import read_jsonl as read_ledger
from alpaca_ds.generate import run as gen
from helpers.generation import Teacher, cli_env, gen_config, overrides, read_jsonl, run_generate_cli
from helpers.paths import ROOT

# 25% of requests fail, in every way the simulator knows; the hang outlasts the client's 1 s timeout
FAULTS = (
    "--fail-429",
    "0.06",
    "--retry-after",
    "0.1",
    "--fail-500",
    "0.06",
    "--fail-timeout",
    "0.03",
    "--hang",
    "30",
    "--fail-truncate",
    "0.05",
    "--fail-malformed",
    "0.05",
)
# small requests, so a run is many of them: 1 prompt each, 4 tasks per prompt (numbers 4..7)
SMALL = ("api.prompts_per_request=1", "num_tasks=8", "api.max_tokens=700")


def replay(out_dir, cfg):
    """What the ledger implies, recomputed from scratch: (accepted records, spend, ledger entries)."""
    entries, _ = read_ledger(out_dir / gen.LEDGER)
    led = CallLedger(out_dir / gen.LEDGER, "i", writable=False)
    proc = gen.Processor(gen.prepare(cfg, need_key=False))
    gen.process_in_order(proc, led)
    return proc.accepted, led.spent, entries, led.interrupted


def check_consistent(out_dir, cfg, target_reached=True):
    accepted = read_jsonl(out_dir / "accepted.jsonl")
    replayed, spent, entries, orphans = replay(out_dir, cfg)
    assert accepted == replayed  # nothing lost, nothing written twice
    instructions = [r["instruction"] for r in accepted]
    assert len(set(instructions)) == len(instructions)
    if target_reached:
        assert len(accepted) == cfg.num_instructions
    regen = json.loads((out_dir / "regen.json").read_text())
    assert regen == [gen.alpaca_record(r) for r in accepted]
    assert not orphans  # every attempt sent has its result on record
    cost = json.loads((out_dir / "cost.json").read_text())
    assert cost["spent_usd"] == pytest.approx(spent.usd) and cost["spent_tokens"] == spent.tokens
    assert spent.usd <= cfg.budget.max_usd
    return accepted, entries


def test_local_run_outputs_and_stats(tmp_path):
    with Teacher("--latency", "0.02") as teacher:
        cfg = gen_config(tmp_path / "g", teacher.url, "num_instructions=300", "concurrency=4")
        result = gen.run(cfg)
        served = teacher.stats()["requests"]
    assert result.stop_reason == "target" and result.exit_code == 0
    accepted, entries = check_consistent(tmp_path / "g", cfg)
    stats = json.loads((tmp_path / "g" / "stats.json").read_text())
    c = stats["candidates"]
    assert c["parsed"] == c["accepted"] + sum(c["rejected"].values()) + c["unused_after_target"]
    # the simulator writes every kind of bad task Alpaca filters, and each is counted by its reason
    assert {
        "too_short",
        "blacklisted_word",
        "banned_prefix",
        "starts_with_punctuation",
        "starts_non_ascii",
        "duplicate",
        "rouge_similar",
    } <= set(c["rejected"]) and c["dropped_blocks"]["unparseable"] > 0
    assert stats["requests"]["succeeded"] == served == sum(1 for e in entries if e["t"] == "send")
    rec = accepted[0]
    assert len(rec["most_similar_instructions"]) == 10 and 0 < rec["avg_similarity_score"] < 0.7
    assert max(rec["most_similar_instructions"].values()) <= 0.7
    # a finished run rerun sends nothing and rewrites the same regen.json
    before = (tmp_path / "g" / "regen.json").read_bytes()
    with Teacher() as teacher:
        again = gen.run(gen_config(tmp_path / "g", teacher.url, "num_instructions=300"))
        assert teacher.stats()["requests"] == 0
    assert again.stop_reason == "target" and (tmp_path / "g" / "regen.json").read_bytes() == before


def test_rerun_of_a_run_whose_last_request_reached_the_target(tmp_path):
    # at concurrency 1 nothing is in flight past the request that reaches the target: the replay on a rerun ends
    # exactly at the ledger's end, with nothing waiting to be processed
    with Teacher("--latency", "0.01") as teacher:
        first = gen.run(gen_config(tmp_path / "g", teacher.url, "num_instructions=40", "concurrency=1", *SMALL))
    assert first.stop_reason == "target"
    before = {f: (tmp_path / "g" / f).read_bytes() for f in ("accepted.jsonl", "regen.json", gen.LEDGER)}
    with Teacher() as teacher:
        result = run_generate_cli(tmp_path / "g", teacher.url, "num_instructions=40", "concurrency=1", *SMALL)
        assert teacher.stats()["requests"] == 0
    assert result.returncode == 0, result.stderr
    assert "done: 40/40 instructions" in result.stdout + result.stderr
    assert {f: (tmp_path / "g" / f).read_bytes() for f in before} == before


def test_same_regen_at_concurrency_1_and_32(tmp_path):
    # deterministic faults (drawn from the request body and its retry count) do not change the data either
    faults = (
        "--fail-429",
        "0.05",
        "--retry-after",
        "0.05",
        "--fail-500",
        "0.05",
        "--fail-truncate",
        "0.05",
        "--fail-malformed",
        "0.05",
        "--latency",
        "0.01",
        "--jitter",
        "0.01",
    )
    outputs = {}
    for concurrency in (1, 32):
        with Teacher(*faults) as teacher:  # a fresh simulator: the same fault draws for each run
            cfg = gen_config(
                tmp_path / f"c{concurrency}", teacher.url, "num_instructions=200", f"concurrency={concurrency}", *SMALL
            )
            assert gen.run(cfg).stop_reason == "target"
        outputs[concurrency] = (tmp_path / f"c{concurrency}" / "regen.json").read_bytes()
        check_consistent(tmp_path / f"c{concurrency}", cfg)
    assert outputs[1] == outputs[32]
    assert len(json.loads(outputs[1])) == 200


def test_processing_that_falls_behind_holds_back_no_request(tmp_path, monkeypatch):
    # processing slower than the answers arrive: the requests go out as if it kept up, the answers beyond the
    # in-memory window (2 x concurrency) are read back from the ledger, and the data is the ledger's replay
    process, pause = gen.Processor.process, 0.05  # 5x the teacher's latency: the answers outrun the processing

    def slow(self, index, choices):
        time.sleep(pause)
        return process(self, index, choices)

    monkeypatch.setattr(gen.Processor, "process", slow)
    with Teacher("--latency", "0.01") as teacher:
        cfg = gen_config(
            tmp_path / "g", teacher.url, "num_instructions=100000", "max_requests=50", "concurrency=4", *SMALL
        )
        result = gen.run(cfg)
    assert result.stop_reason == "max_requests"
    stats = result.stats
    assert stats["requests"]["processed"] == 50
    assert stats["this_run"]["request_seconds"] < pause * 50 / 2
    assert stats["this_run"]["max_processing_lag"] > 2 * 4  # some answers were read back from the ledger
    check_consistent(tmp_path / "g", cfg, target_reached=False)


def test_a_slow_first_answer_lets_no_requests_run_ahead_of_the_need(tmp_path, monkeypatch):
    # while the first answer is being processed (a cold start: the ROUGE-L loops compiling, say), no yield is
    # measured yet: the loop sends what the prior says the target needs, not a request for every answer that
    # comes back (which once spent a budget 6x over on a target the first 5 answers met)
    from alpaca_ds.generate import prompts
    from alpaca_ds.generate.dryrun import expected_per_request

    parse, calls = prompts.parse_response, []

    def slow_first(*args, **kwargs):  # the first answer's processing, half-way through, takes a second
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.0)
        return parse(*args, **kwargs)

    monkeypatch.setattr(prompts, "parse_response", slow_first)
    with Teacher() as teacher:
        cfg = gen_config(tmp_path / "g", teacher.url, "num_instructions=60", "concurrency=4", *SMALL)
        result = gen.run(cfg)
    assert result.stop_reason == "target" and result.exit_code == 0
    prior = expected_per_request(cfg, 1)
    sent = result.stats["requests"]["sent"]
    assert sent <= -(-60 // prior) + cfg.concurrency, (sent, prior)
    check_consistent(tmp_path / "g", cfg)


def test_budget_is_never_exceeded_and_stops_cleanly(tmp_path):
    out = tmp_path / "g"
    with Teacher("--latency", "0.05") as teacher:
        # room for a handful of requests' worst cases, far from the 1000 asked for
        cfg = gen_config(out, teacher.url, "num_instructions=1000", "concurrency=8", "budget.max_usd=0.02", *SMALL)
        result = gen.run(cfg)
        assert result.stop_reason == "budget" and result.exit_code == 3
        assert "budget exhausted" in result.message and "budget.max_usd $0.02" in result.message
        accepted, entries = check_consistent(out, cfg, target_reached=False)
        assert 0 < len(accepted) < 1000
        spent = sum(e["usd"] for e in entries if e["t"] == "result")
        assert 0.015 < spent <= 0.02
        # a token budget binds the same way
        cfg_tok = gen_config(tmp_path / "t", teacher.url, "num_instructions=1000", "budget.max_tokens=20000", *SMALL)
        assert gen.run(cfg_tok).stop_reason == "budget"
        assert json.loads((tmp_path / "t" / "cost.json").read_text())["spent_tokens"] <= 20000
        # raising the budget continues the same run to its target
        cfg2 = gen_config(out, teacher.url, "num_instructions=300", "concurrency=8", *SMALL)
        assert gen.run(cfg2).stop_reason == "target"
        check_consistent(out, cfg2)


def test_errors_before_any_request(tmp_path):
    with Teacher() as teacher:

        def fails(*extra, env=None):
            result = run_generate_cli(tmp_path / "g", teacher.url, "num_instructions=10", *extra, env=env)
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
            return lines[0]

        msg = fails("api.api_key_env=ALPACA_DS_TEST_KEY_UNSET")
        assert "ALPACA_DS_TEST_KEY_UNSET" in msg and "not set" in msg
        msg = fails(f"seed_tasks={tmp_path}/missing.jsonl")
        assert f"{tmp_path}/missing.jsonl: cannot read seed tasks" in msg
        (tmp_path / "bad.jsonl").write_text('{"id": "x"\n')
        assert f"{tmp_path}/bad.jsonl:1: invalid JSON" in fails(f"seed_tasks={tmp_path}/bad.jsonl")
        msg = fails("api.model=my-finetune", "api.encoding=cl100k_base")
        assert "no price for model 'my-finetune'" in msg and "budget.prompt_usd_per_1m" in msg
        bad_config = run_generate_cli(tmp_path / "g", teacher.url, "num_instructions=10", "budget.max_usdd=3")
        assert bad_config.returncode == 2 and "unknown key 'budget.max_usdd'" in bad_config.stderr
        assert teacher.stats()["requests"] == 0
        assert not (tmp_path / "g" / "responses.jsonl").exists()


@pytest.mark.slow
def test_api_key_never_reaches_disk_or_logs(tmp_path):
    secret = "sk-alpaca-ds-test-" + "".join(random.choice("abcdef0123456789") for _ in range(32))
    env = cli_env(TEACHER_KEY=secret)
    with Teacher("--require-key", secret, *FAULTS) as teacher:
        ok = run_generate_cli(
            tmp_path / "ok",
            teacher.url,
            "num_instructions=60",
            "api.api_key_env=TEACHER_KEY",
            "api.timeout_s=1",
            *SMALL,
            env=env,
        )
        assert ok.returncode == 0, ok.stderr
        bad_env = cli_env(TEACHER_KEY=secret[::-1])
        bad = run_generate_cli(
            tmp_path / "bad", teacher.url, "num_instructions=60", "api.api_key_env=TEACHER_KEY", *SMALL, env=bad_env
        )
    assert bad.returncode == 5 and "auth" in bad.stderr and "HTTP 401" in bad.stderr
    for text in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
        assert secret not in text and secret[::-1] not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and secret[::-1].encode() not in data, path


def test_chat_mode(tmp_path):
    with Teacher() as teacher:
        cfg = gen_config(tmp_path / "g", teacher.url, "num_instructions=80", "api.mode=chat", "api.model=gpt-4o-mini")
        result = gen.run(cfg)
    assert result.stop_reason == "target"
    accepted, entries = check_consistent(tmp_path / "g", cfg)
    sends = [e for e in entries if e["t"] == "send"]
    assert len(sends) >= 2  # one prompt per request in chat mode


def test_restart_with_other_settings_is_refused(tmp_path):
    with Teacher() as teacher:
        gen.run(gen_config(tmp_path / "g", teacher.url, "num_instructions=20"))
        with pytest.raises(UserError, match=r"different settings \(rouge_threshold, seed\)"):
            gen.run(gen_config(tmp_path / "g", teacher.url, "num_instructions=20", "seed=7", "rouge_threshold=0.6"))
        # what only changes speed or money may change
        again = gen.run(
            gen_config(tmp_path / "g", teacher.url, "num_instructions=40", "concurrency=3", "budget.max_usd=2")
        )
        assert again.stop_reason == "target" and again.accepted == 40


def test_dry_run_counts_real_prompts(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpaca_ds.cli",
            "generate",
            "--config",
            "launch/recipes/self_instruct_openai.yaml",
            "--dry-run",
            "--set",
            "num_instructions=400",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr  # no key needed, nothing sent
    assert "no request is sent" in out.stdout and "requests: 20 (100 prompts)" in out.stdout
    cfg = gen_config(tmp_path, "http://unused", "num_instructions=400", "seed_tasks=seeds/seed_tasks.jsonl")
    d = gen.dry_run(cfg)
    setup = gen.prepare(cfg, need_key=False)
    assert d["prompt_tokens"] == sum(len(setup.enc.encode(p)) for i in range(d["requests"]) for p in setup.prompts(i))
    assert f"prompt tokens: {d['prompt_tokens']:,}" in out.stdout
    assert d["worst_usd"] == pytest.approx((d["prompt_tokens"] * 1.5 + 100 * 3072 * 2.0) / 1e6)
    # online and batch side by side: the Batch API at half the price (gpt-3.5-turbo-instruct has no batch entry)
    assert d["batch_worst_usd"] == pytest.approx(d["worst_usd"] / 2)
    assert d["batch_expected_usd"] == pytest.approx(d["expected_usd"] / 2)
    assert f"cost online: ~${d['expected_usd']:,.2f} expected" in out.stdout
    assert f"cost batch:  ~${d['batch_expected_usd']:,.2f} expected, ${d['batch_worst_usd']:,.2f} at most" in out.stdout


def count_lines(path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def start_generate(out_dir, url, *extra):
    args = [a for o in overrides(out_dir, url, *extra) for a in ("--set", o)]
    return subprocess.Popen(
        [sys.executable, "-m", "alpaca_ds.cli", "generate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=cli_env(),
    )


@pytest.mark.slow
def test_ctrl_c_stops_gracefully_and_the_rerun_continues(tmp_path):
    out = tmp_path / "g"
    with Teacher("--latency", "1.0") as teacher:
        args = ("num_instructions=120", "concurrency=2", *SMALL)
        proc = start_generate(out, teacher.url, *args)
        deadline = time.time() + 60
        while (
            time.time() < deadline
            and len(read_jsonl(out / "accepted.jsonl") if (out / "accepted.jsonl").exists() else []) == 0
        ):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130, stderr
        assert "stopped: interrupted; rerun the same command to continue" in stderr
        cfg = gen_config(out, teacher.url, *args)
        accepted, _ = check_consistent(out, cfg, target_reached=False)
        assert 0 < len(accepted) < 120
        assert gen.run(gen_config(out, teacher.url, *args, "concurrency=16", "api.timeout_s=5")).stop_reason == "target"
        check_consistent(out, cfg)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    """The acceptance scenario, shortened: >= 20% mixed faults, 3 SIGKILLs at random moments, then a clean run."""
    out = tmp_path / "g"
    rng = random.Random(1234)
    args = (
        "num_instructions=300",
        "concurrency=8",
        "api.timeout_s=1",
        "api.max_retries=10",
        "budget.max_usd=1",
        *SMALL,
    )
    with Teacher("--latency", "0.1", "--jitter", "0.05", *FAULTS) as teacher:
        for _ in range(3):
            # a random moment: once the ledger has grown by a random number of lines (sends and results, which
            # come at every stage of a request's life), plus a random delay
            at = count_lines(out / "responses.jsonl") + rng.randint(10, 80)
            proc = start_generate(out, teacher.url, *args)
            deadline = time.time() + 60
            while proc.poll() is None and time.time() < deadline and count_lines(out / "responses.jsonl") < at:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            _, stderr = proc.communicate()
            assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr}"
        final = run_generate_cli(out, teacher.url, *args, timeout=300)
        served = teacher.stats()
    assert final.returncode == 0, final.stderr
    cfg = gen_config(out, "http://unused", *args)
    accepted, entries = check_consistent(out, cfg)
    outcomes = Counter(e["kind"] for e in entries if e["t"] == "result")
    assert outcomes["interrupted"] >= 1  # in flight at a kill: charged at the worst case
    assert len({"rate_limited", "server_error", "timeout", "malformed"} & set(outcomes)) >= 3  # mixed failures
    failed = sum(v for k, v in served["by_outcome"].items() if k != "ok")
    assert failed / served["requests"] >= 0.2
    assert json.loads((out / "stats.json").read_text())["this_run"]["recovered"]["accepted_on_disk"] > 0


def test_requests_that_fail_all_retries_are_recorded_not_raised(tmp_path):
    with Teacher("--fail-500", "1.0") as teacher:
        cfg = gen_config(
            tmp_path / "g",
            teacher.url,
            "num_instructions=10",
            "concurrency=2",
            "api.max_retries=2",
            "api.max_consecutive_failures=3",
        )
        result = gen.run(cfg)
    assert result.stop_reason == "failures" and result.exit_code == 4
    assert "requests in a row failed all retries" in result.message
    entries = read_jsonl(tmp_path / "g" / "responses.jsonl")
    gave_up = [e for e in entries if e["t"] == "gave_up"]
    assert len(gave_up) >= 3 and all(e["kind"] == "server_error" and e["a"] == 3 for e in gave_up)
    stats = json.loads((tmp_path / "g" / "stats.json").read_text())
    assert stats["requests"]["failed"] == len(gave_up) and stats["attempt_outcomes"]["server_error"] >= 9
    assert json.loads((tmp_path / "g" / "cost.json").read_text())["spent_usd"] == 0  # a 500 is not billed


def test_retry_waits_honour_retry_after(tmp_path):
    api = gen_config(
        tmp_path, "http://unused", "num_instructions=1", "api.backoff_initial_s=0.1", "api.backoff_max_s=0.5"
    ).api
    rng = random.Random(0)
    assert all(0.05 <= backoff_delay(api, 1, None, rng) <= 0.1 for _ in range(50))  # with jitter, never near zero
    assert all(0.1 <= backoff_delay(api, 2, None, rng) <= 0.2 for _ in range(50))  # doubles per retry
    assert all(0.25 <= backoff_delay(api, 5, None, rng) <= 0.5 for _ in range(50))  # up to backoff_max_s
    assert all(2.0 <= backoff_delay(api, 1, 2.0, rng) <= 2.2 for _ in range(50))  # never sooner than Retry-After


def test_one_run_per_out_dir(tmp_path):
    """The out_dir's lock (filelock): a second run on it is refused while the first holds it, in another process
    too, and free again once the holder is gone, however it ended."""
    code = (
        f"import time; from alpaca_ds.common.lock import exclusive; lock = exclusive({str(tmp_path / 'g')!r}, "
        "'x'); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = gen_config(tmp_path / "g", "http://unused", "num_instructions=5")
        with pytest.raises(UserError, match="another `alpaca-ds generate` is running on this folder"):
            gen.RunDir(gen.prepare(cfg, need_key=False))
    finally:
        holder.kill()
        holder.wait()
    gen.RunDir(gen.prepare(cfg, need_key=False)).close()  # killed: the kernel dropped its lock

"""Benchmarks of `alpaca-ds generate` against the local teacher simulator.

    /work/venv/bin/python benchmarks/bench_generate.py                 # throughput at concurrency 1, 8, 64
    /work/venv/bin/python benchmarks/bench_generate.py accepting       # most answers accepted: processing lags
    /work/venv/bin/python benchmarks/bench_generate.py crash           # the crash-safety acceptance run
    /work/venv/bin/python benchmarks/bench_generate.py batch           # online vs the Batch API, in dollars

throughput: the simulator answers after exactly --latency seconds (1 s), so N requests in flight can complete
at most N / latency requests per second. For each concurrency the real command runs `rounds` x concurrency
requests (max_requests) toward a target it cannot reach, and reports requests/s from the first request sent to
the last answer (stats.json this_run; startup excluded) as a fraction of that bound. Every answer is parsed,
filtered and ROUGE-L de-duplicated as in a real run. Two request shapes: 1 prompt per request, and Alpaca's 5
(whose 5 x 16 candidates per answer make it CPU-bound on the processing side long before the network is).

accepting: a teacher whose candidates are mostly accepted (`--noise`, default 0.05: ~92% of candidates pass
the filters and ROUGE-L), Alpaca's 5 prompts per request, 64 in flight, 1 s latency, `rounds` x 64 requests
(max_requests, as above: whole rounds, so the bound holds exactly) toward a target it cannot reach; the default 10
rounds accept ~45,000 instructions (at least 30,000 is the goal). Every accepted candidate grows the ROUGE-L index,
so processing an answer costs more as the run goes on and may fall behind the network; the request loop must not
wait for it. Reports requests/s against the bound 64/s (as above), the acceptance rate, the peak processing lag
(answers received, not yet processed) and the command's wall time (start-up and the processing left after the last
answer included), for this tree, for the generator of a git revision (--old, default: before the request loop
stopped waiting on processing) and for this tree's request side alone (benchmarks/request_side.py: processing
stubbed out, the share of the bound the loop, the client, the ledger and the simulator reach by themselves on this
machine), alternating, each trio after a CPU check (the machine is shared). Also the CPU
seconds each run cost, per request: the generator process (all its threads, start-up included) and the simulator
process (which serves both trees); far less sensitive to other load on the machine than requests/s.

crash: a teacher failing >= 20% of requests in mixed ways (429 with Retry-After, 500, hangs past the client
timeout, answers cut at max_tokens, malformed bodies), 5 SIGKILLs of the generator at random moments, then a
run to the end; checks that accepted.jsonl equals the replay of the ledger (nothing lost, nothing written
twice), no instruction repeats, the target is reached, regen.json matches, and spend <= budget.

batch: the same target online and through the Batch API (api.transport: batch) against one simulator, whose
answers are the same either way: requests, wall time, dollars per accepted instruction, whether regen.json is
equal, and spent vs billed. The batch run's first wave is sized from expected_accept_rate (0.25, Alpaca's share,
a prior): against the simulator, which keeps far more, it buys more requests than needed; a third run is given
the rate the online run measured.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import ROOT, SELF_INSTRUCT, cpu_check

SEEDS = ROOT / "seeds" / "seed_tasks.jsonl"
if not SEEDS.is_file():
    SEEDS = SELF_INSTRUCT / "seed_tasks.jsonl"


def Teacher(*flags: str):
    from alpaca_ds.simulator.local import SimulatorProcess

    return SimulatorProcess(SEEDS, *flags, cwd=ROOT)


CLI = ("-m", "alpaca_ds.cli")
REQUEST_SIDE = (str(ROOT / "benchmarks" / "request_side.py"),)  # the CLI with processing stubbed out


def generate_args(out: Path, url: str, *extra: str, entry: tuple[str, ...] = CLI) -> list[str]:
    sets = [
        f"out_dir={out}",
        f"api.base_url={url}",
        "api.api_key_env=null",
        "progress=false",
        f"seed_tasks={SEEDS}",
        *extra,
    ]
    return [sys.executable, *entry, "generate", *[a for s in sets for a in ("--set", s)]]


def throughput(args) -> list[dict]:
    rows = []
    teacher = Teacher("--latency", str(args.latency))
    try:
        for per_request in args.prompts_per_request:
            for concurrency in args.concurrency:
                rates = []
                for _ in range(args.repeats):
                    out = Path(tempfile.mkdtemp(prefix="bench-generate-"))
                    requests = args.rounds * concurrency
                    cmd = generate_args(
                        out,
                        teacher.url,
                        "num_instructions=10000000",
                        f"concurrency={concurrency}",
                        f"max_requests={requests}",
                        "budget.max_usd=1000",
                        f"api.prompts_per_request={per_request}",
                        f"api.http_backend={args.backend}",
                    )
                    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
                    run = json.loads((out / "stats.json").read_text())["this_run"]
                    rates.append(run["requests_per_s"])
                    shutil.rmtree(out)
                bound = concurrency / args.latency
                rate = statistics.median(rates)
                rows.append(
                    {
                        "prompts": per_request,
                        "concurrency": concurrency,
                        "requests": requests,
                        "req_s": rate,
                        "bound": bound,
                        "fraction": rate / bound,
                        "runs": rates,
                    }
                )
                print(
                    f"prompts/request {per_request:>2}  concurrency {concurrency:>3}: {rate:7.2f} req/s of "
                    f"{bound:6.1f} = {rate / bound:6.1%}  (median of {[round(r, 2) for r in rates]})",
                    flush=True,
                )
    finally:
        teacher.close()
    return rows


def tree_at(rev: str) -> Path:
    """The alpaca_ds package of git revision `rev`, exported to a temporary directory (for PYTHONPATH)."""
    dest = Path(tempfile.mkdtemp(prefix=f"bench-generate-{rev}-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "alpaca_ds"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux /proc), None where unknown."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def accepting(args) -> None:
    import os

    old = tree_at(args.old)
    runs = {"this tree": (ROOT, CLI), f"git {args.old}": (old, CLI), "request side": (ROOT, REQUEST_SIDE)}
    teacher = Teacher("--latency", str(args.latency), "--noise", str(args.noise))
    sets = [
        "num_instructions=10000000",
        f"max_requests={args.rounds * 64}",
        "concurrency=64",
        "budget.max_usd=1000",
        "api.prompts_per_request=5",
    ]
    results = {name: [] for name in runs}
    try:
        # Before the timed runs: a round from each tree's CLI, so numba's cache of its kernels is warm (no compile in
        # a timed run), then the request side for a whole run. Request i's prompts are the same in every run, and
        # the simulator counts tokens faster in lines it has counted before (the first round of a fresh simulator
        # took it 3.3-5.0 ms per answer, 1.4-2.0 ms once it had answered the same prompts): without this, the first
        # timed run would be the only one to meet a simulator that had not answered its prompts before.
        for tree, entry, requests in ((ROOT, CLI, 64), (old, CLI, 64), (ROOT, REQUEST_SIDE, args.rounds * 64)):
            out = Path(tempfile.mkdtemp(prefix="bench-generate-"))
            env = {**os.environ, "PYTHONPATH": str(tree)}
            subprocess.run(
                generate_args(out, teacher.url, *sets, f"max_requests={requests}", entry=entry),
                check=True,
                cwd=tree,
                capture_output=True,
                env=env,
            )
            shutil.rmtree(out)
        for r in range(args.repeats):
            cores = cpu_check()
            for name, (tree, entry) in runs.items():
                out = Path(tempfile.mkdtemp(prefix="bench-generate-"))
                env = {**os.environ, "PYTHONPATH": str(tree)}
                started, client0, sim0 = time.monotonic(), children_cpu(), cpu_seconds(teacher.proc.pid)
                # cwd too: `python -m` puts it before PYTHONPATH
                cmd = generate_args(out, teacher.url, *sets, entry=entry)
                subprocess.run(cmd, check=True, cwd=tree, capture_output=True, env=env)
                wall = time.monotonic() - started
                client, sim = children_cpu() - client0, cpu_seconds(teacher.proc.pid)
                sim = sim - sim0 if sim is not None and sim0 is not None else None
                stats = json.loads((out / "stats.json").read_text())
                shutil.rmtree(out)
                c, run = stats["candidates"], stats["this_run"]
                row = {
                    "cores": cores,
                    "req_s": run["requests_per_s"],
                    "wall": wall,
                    "accepted": c["accepted"],
                    "rate": c["accepted"] / (c["parsed"] - c["unused_after_target"]) if c["parsed"] else None,
                    "requests": run["requests_completed"],
                    "lag": run.get("max_processing_lag"),
                    "window": run["request_seconds"],
                    "client_ms": 1000 * client / run["requests_completed"],
                    "sim_ms": 1000 * sim / run["requests_completed"] if sim is not None else None,
                }
                results[name].append(row)
                lag = "n/a" if row["lag"] is None else row["lag"]
                share = "nothing parsed" if row["rate"] is None else f"{row['rate']:.1%} of candidates"
                print(
                    f"round {r + 1} (cpu check {cores:.2f} cores) {name:>14}: {row['req_s']:6.2f} req/s of 64 = "
                    f"{row['req_s'] / 64:6.1%}; {row['requests']} requests in {row['window']:.1f} s, "
                    f"{row['accepted']:,} accepted ({share}), peak processing lag {lag} "
                    f"answers, wall {wall:.1f} s; CPU per request: generator {row['client_ms']:.1f} ms, simulator "
                    + ("n/a" if row["sim_ms"] is None else f"{row['sim_ms']:.1f} ms"),
                    flush=True,
                )
    finally:
        teacher.close()
        shutil.rmtree(old)
    print()
    names = list(runs)
    for name in names:
        rows = results[name]
        fraction = statistics.median(x["req_s"] for x in rows) / 64
        rates = [x["rate"] for x in rows if x["rate"] is not None]
        print(
            f"{name:>14}: median {fraction:6.1%} of the bound, wall median "
            f"{statistics.median(x['wall'] for x in rows):.1f} s, acceptance "
            + (f"{min(rates):.1%}..{max(rates):.1%}" if rates else "none (nothing processed)")
            + ", CPU per request median: "
            f"generator {statistics.median(x['client_ms'] for x in rows):.1f} ms"
            + (
                f", simulator {statistics.median(x['sim_ms'] for x in rows):.1f} ms"
                if all(x["sim_ms"] is not None for x in rows)
                else ""
            )
        )
    for other in names[1:]:
        ratios = [a["req_s"] / b["req_s"] for a, b in zip(results[names[0]], results[other])]
        print(f"this tree / {other}, req/s, per round: {[round(x, 3) for x in ratios]}")
    rows, alone = results[names[0]], results["request side"]
    print(
        f"goal: >= 95% of the bound (5 prompts, 64 in flight, >= 75% accepted, >= 30,000 instructions): "
        f"median {statistics.median(x['req_s'] for x in rows) / 64:.1%}, best {max(x['req_s'] for x in rows) / 64:.1%}"
        f"; accepted {min(x['rate'] for x in rows):.1%} of candidates, {min(x['accepted'] for x in rows):,} "
        f"instructions at least; the request side alone on this machine: median "
        f"{statistics.median(x['req_s'] for x in alone) / 64:.1%}, best {max(x['req_s'] for x in alone) / 64:.1%}"
    )


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def crash(args) -> None:
    from alpaca_ds.api.ledger import CallLedger
    from alpaca_ds.common.journal import read_jsonl
    from alpaca_ds.config import load_config
    from alpaca_ds.generate import run as gen
    from alpaca_ds.generate.config import GenerateConfig

    rng = random.Random(args.seed)
    out = Path(tempfile.mkdtemp(prefix="bench-crash-"))
    faults = [
        "--fail-429",
        "0.06",
        "--retry-after",
        "0.2",
        "--fail-500",
        "0.06",
        "--fail-timeout",
        "0.03",
        "--hang",
        "60",
        "--fail-truncate",
        "0.05",
        "--fail-malformed",
        "0.05",
    ]
    # small requests (1 prompt, tasks 4..7), so the run is hundreds of them and a kill lands mid-run
    sets = [
        f"num_instructions={args.target}",
        "concurrency=16",
        "api.timeout_s=2",
        "api.max_retries=10",
        f"budget.max_usd={args.budget}",
        "api.backoff_initial_s=0.1",
        "api.backoff_max_s=2",
        "api.prompts_per_request=1",
        "num_tasks=8",
        "api.max_tokens=700",
    ]
    teacher = Teacher("--latency", "0.2", "--jitter", "0.15", *faults)
    started = time.time()
    try:
        for k in range(args.kills):
            at = count_lines(out / "responses.jsonl") + rng.randint(20, 250)
            proc = subprocess.Popen(
                generate_args(out, teacher.url, *sets), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            while proc.poll() is None and count_lines(out / "responses.jsonl") < at:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.2))
            assert proc.poll() is None, "the run finished before kill; raise --target"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            print(
                f"kill {k + 1}: SIGKILL with {count_lines(out / 'accepted.jsonl')} accepted on disk, "
                f"{count_lines(out / 'responses.jsonl')} ledger lines",
                flush=True,
            )
        final = subprocess.run(generate_args(out, teacher.url, *sets), cwd=ROOT, capture_output=True, text=True)
        served = teacher.stats()
    finally:
        teacher.close()
    print(final.stdout.strip() or final.stderr.strip())
    assert final.returncode == 0, final.stderr

    cfg = load_config(GenerateConfig, None, [s for s in generate_args(out, "http://x", *sets)[5::2]])
    entries, _ = read_jsonl(out / gen.LEDGER)
    led = CallLedger(out / gen.LEDGER, "i", writable=False)
    orphans = led.interrupted
    proc = gen.Processor(gen.prepare(cfg, need_key=False))
    gen.process_in_order(proc, led)
    accepted = [json.loads(x) for x in (out / "accepted.jsonl").read_text().splitlines()]
    regen = json.loads((out / "regen.json").read_text())
    instructions = [r["instruction"] for r in accepted]
    outcomes = Counter(e["kind"] for e in entries if e["t"] == "result")
    failed = sum(v for k, v in served["by_outcome"].items() if k != "ok")
    checks = {
        "target reached": len(accepted) == args.target,
        "accepted.jsonl == replay of the ledger": accepted == proc.accepted,
        "no duplicated instruction": len(set(instructions)) == len(instructions),
        "regen.json == accepted records": regen == [gen.alpaca_record(r) for r in accepted],
        "every attempt sent has its result": not orphans,
        f"spend ${led.spent.usd:.4f} <= budget ${args.budget}": led.spent.usd <= args.budget,
        f"teacher failed {failed}/{served['requests']} = {failed / served['requests']:.0%} >= 20%": failed
        / served["requests"]
        >= 0.2,
    }
    print(f"attempt outcomes in the ledger: {dict(outcomes)}; {time.time() - started:.0f} s")
    for name, ok in checks.items():
        print(f"  {'ok ' if ok else 'FAIL'} {name}")
    shutil.rmtree(out)
    if not all(checks.values()):
        sys.exit(1)


def batch(args) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    teacher = Teacher("--batch-seconds", str(args.batch_seconds))
    sets = [f"num_instructions={args.target}", f"budget.max_usd={args.budget}", "api.batch.poll_s=0.5"]
    rows = {}

    def run(name: str, *extra: str) -> None:
        start = time.time()
        done = subprocess.run(
            generate_args(out / name, teacher.url, *sets, *extra), cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        rows[name] = (
            time.time() - start,
            json.loads((out / name / "cost.json").read_text()),
            json.loads((out / name / "stats.json").read_text()),
        )

    try:
        run("online")
        run("batch", "api.transport=batch")  # first wave from the prior, expected_accept_rate 0.25
        online_stats = rows["online"][2]
        rate = online_stats["accepted"] / online_stats["candidates"]["parsed"]
        run("batch, rate known", "api.transport=batch", f"expected_accept_rate={rate:.4f}")
        billed = teacher.stats()["billed_usd"]
    finally:
        teacher.close()
    for name, (seconds, cost, stats) in rows.items():
        print(
            f"{name:17}  {stats['accepted']:,} instructions from {stats['requests']['sent']:4} requests in "
            f"{seconds:5.1f} s: spent ${cost['spent_usd']:.4f}, ${1000 * cost['usd_per_accepted']:.4f} per 1,000 "
            f"instructions ({cost['usd_per_accepted'] / rows['online'][1]['usd_per_accepted']:.1%} of online)"
        )
    spent = {t: sum(c["spent_usd"] for name, (_, c, _) in rows.items() if c["transport"] == t) for t in billed}
    equal = all(
        (out / name / "regen.json").read_bytes() == (out / "online" / "regen.json").read_bytes() for name in rows
    )
    print(
        f"regen.json equal in all three: {equal}; spent == billed: "
        f"{all(abs(spent[t] - billed[t]) < 1e-9 for t in billed)} ({spent} vs {billed})"
    )
    shutil.rmtree(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="throughput", choices=["throughput", "accepting", "crash", "batch"])
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--prompts-per-request", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--rounds", type=int, default=10, help="requests per run = rounds x concurrency")
    ap.add_argument("--repeats", type=int, default=3, help="runs per point; the median is reported")
    ap.add_argument("--backend", default="aiohttp", choices=["aiohttp", "httpx"])
    ap.add_argument("--noise", type=float, default=0.05, help="accepting: the teacher's share of bad tasks")
    ap.add_argument("--old", default="fa95312", help="accepting: the git revision compared with this tree")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--target", type=int, default=1500)
    ap.add_argument("--budget", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-seconds", type=float, default=2.0, help="batch mode: how long a batch runs")
    args = ap.parse_args()
    {"throughput": throughput, "accepting": accepting, "crash": crash, "batch": batch}[args.mode](args)


if __name__ == "__main__":
    main()

"""Peak resident memory of `alpaca_ds.dataset.build.run`: the 52K Alpaca records vs the same records 10 times
(520K), each build in a fresh Python process, main process and tokenizer workers reported separately.

    /work/venv/bin/python benchmarks/bench_memory.py
    /work/venv/bin/python benchmarks/bench_memory.py --times 10 --format json --set shard_size=100000

Both inputs are written into a temp dir by the same writer (a JSON list by default, as the public file is;
`--format jsonl` for JSONL), so they differ only in length. Each child process imports alpaca_ds, builds with
the LLaMA tokenizer, Alpaca's settings (max_length 512, truncate, no validation split) and the schema's
defaults otherwise (shard_size 100,000, batch_size 2,048, one worker per CPU), then reports
getrusage(RUSAGE_SELF).ru_maxrss (the main process) and the peak RSS (VmHWM) of each pool worker, read from
/proc every 50 ms while the workers live. getrusage(RUSAGE_CHILDREN).ru_maxrss is printed too, but it
does not measure the workers: Linux folds the parent's RSS at fork/vfork time into a child's maxrss before
the child execs, so for spawned workers it reads about the main process's size when the pool started.
A streaming builder's peak should not grow with the input; the goal is 520K / 52K <= 1.2x.
Needs ../shared/data; without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ALPACA, LLAMA, missing_alpaca_data

GOAL = 1.2
# Alpaca's settings, spelled out (the schema's defaults otherwise: shard_size 100,000, batch_size 2,048, ...).
ALPACA_SETTINGS = ["max_length=512", "overlength=truncate", "val_fraction=0.0"]

CHILD = r"""
import json, os, resource, sys, threading, time

def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

def poll_workers(peaks, stop):
    # VmHWM (peak RSS since exec) of each pool worker, read while it lives. Before its exec a child still shows
    # this process's image and command line, so only children whose command line differs are read.
    me = os.getpid()
    own = open(f"/proc/{me}/cmdline", "rb").read()
    while not stop.is_set():
        for task in os.listdir(f"/proc/{me}/task"):
            try:
                kids = open(f"/proc/{me}/task/{task}/children").read().split()
            except OSError:
                continue
            for kid in kids:
                try:
                    cmdline = open(f"/proc/{kid}/cmdline", "rb").read()
                    if cmdline == own or b"--multiprocessing-fork" not in cmdline:
                        continue
                    for line in open(f"/proc/{kid}/status"):
                        if line.startswith("VmHWM:"):
                            peaks[kid] = max(peaks.get(kid, 0), int(line.split()[1]) / 1024)
                except OSError:
                    pass
        stop.wait(0.05)

if __name__ == "__main__":
    from alpaca_ds.config import load_config
    from alpaca_ds.dataset.config import DataBuildConfig
    from alpaca_ds.dataset.build import run
    cfg = load_config(DataBuildConfig, None, sys.argv[1:])
    before = rss_mib()
    peaks, stop = {}, threading.Event()
    poller = threading.Thread(target=poll_workers, args=(peaks, stop), daemon=True)
    poller.start()
    t = time.perf_counter()
    manifest = run(cfg).manifest
    wall = time.perf_counter() - t
    stop.set()
    poller.join()
    print(json.dumps({
        "wall": wall, "rss_before_run_mib": before,
        "main_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "workers_hwm_mib": max(peaks.values(), default=0.0), "workers_seen": len(peaks),
        "examples": manifest["counts"]["examples"],
        "tokens": sum(s["tokens"] for s in manifest["splits"].values()),
        "shards": sum(len(s["shards"]) for s in manifest["splits"].values()),
    }))
"""


def write_input(records: list[dict], times: int, path: Path, fmt: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        if fmt == "jsonl":
            for _ in range(times):
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            f.write("[\n")
            first = True
            for _ in range(times):
                for r in records:
                    f.write(("" if first else ",\n") + json.dumps(r, ensure_ascii=False))
                    first = False
            f.write("\n]\n")


def build_in_child(input_path: Path, output: Path, overrides: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        f"input={input_path}",
        f"tokenizer={LLAMA}",
        f"output={output}",
        *ALPACA_SETTINGS,
        *overrides,
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"build of {input_path} failed (exit {proc.returncode}); rerun the child to see why:\n  {' '.join(cmd)}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--times", type=int, default=10, help="how many copies of the 52K records the large input holds")
    ap.add_argument("--format", choices=("json", "jsonl"), default="json", help="input file format for both builds")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a build setting for both builds, as `alpaca-ds data build --set` (repeatable)",
    )
    args = ap.parse_args()

    if missing_alpaca_data("bench_memory"):
        return 0

    records = json.loads(ALPACA.read_text(encoding="utf-8"))
    print(
        f"bench_memory: {len(records)} records x1 vs x{args.times}, {args.format} input, LLaMA tokenizer, "
        f"build settings: {' '.join(ALPACA_SETTINGS + args.overrides)}; {os.cpu_count()} CPUs",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory-") as td:
        td = Path(td)
        for times in (1, args.times):
            path = td / f"alpaca_x{times}.{args.format}"
            write_input(records, times, path, args.format)
            size = path.stat().st_size
            r = build_in_child(path, td / f"out_x{times}", args.overrides)
            r["input_mib"] = size / 2**20
            results[times] = r
            print(
                f"x{times}: {r['examples']} examples, {r['tokens']} tokens, {r['shards']} shard(s), "
                f"{r['wall']:.1f} s, main peak {r['main_maxrss_mib']:.0f} MiB, worker peak "
                f"{r['workers_hwm_mib']:.0f} MiB ({r['workers_seen']} workers)",
                flush=True,
            )
            path.unlink()

    small, large = results[1], results[args.times]
    print()
    cols = ("input MiB", "wall s", "main RSS before run()", "main peak MiB", "worker peak MiB", "ru_maxrss children")
    header = f"{'build':>28s} " + " ".join(f"{c:>{max(len(c), 9)}s}" for c in cols)
    print(header)
    print("-" * len(header))
    widths = [max(len(c), 9) for c in cols]

    def row(label, values):
        return f"{label:>28s} " + " ".join(
            f"{v:>{w}.{1 if i == 1 else 0}f}" if isinstance(v, float) else f"{v:>{w}s}"
            for i, (v, w) in enumerate(zip(values, widths))
        )

    keys = ("input_mib", "wall", "rss_before_run_mib", "main_maxrss_mib", "workers_hwm_mib", "children_maxrss_mib")
    for times, r in results.items():
        print(row(f"{r['examples']:,} examples (x{times})", [float(r[k]) for k in keys]))
    ratios = {k: large[k] / small[k] for k in keys}
    print(row(f"ratio x{args.times} / x1", [f"{ratios[k]:.2f}x" if k != "rss_before_run_mib" else "" for k in keys]))
    print()
    added = (large["main_maxrss_mib"] - large["rss_before_run_mib"]) / (
        small["main_maxrss_mib"] - small["rss_before_run_mib"]
    )
    print(
        f"main process: peak {ratios['main_maxrss_mib']:.2f}x; what run() adds above the RSS before it: "
        f"{small['main_maxrss_mib'] - small['rss_before_run_mib']:.0f} -> "
        f"{large['main_maxrss_mib'] - large['rss_before_run_mib']:.0f} MiB ({added:.2f}x)"
    )
    print(f"workers: peak {ratios['workers_hwm_mib']:.2f}x (VmHWM of each worker, polled every 50 ms while it lives)")
    print(
        "ru_maxrss children is not the workers' own memory: Linux carries the parent's RSS at fork/vfork time\n"
        "into a child's maxrss before it execs, so it reads about the main process's RSS when the pool started."
    )
    worst = max(ratios["main_maxrss_mib"], ratios["workers_hwm_mib"])
    print(
        f"goal: peak memory growth <= {GOAL}x (main and workers): {worst:.2f}x {'MET' if worst <= GOAL else 'NOT MET'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

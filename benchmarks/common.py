"""What the benchmarks share: where the repository and the real public data are (../shared/data, never committed),
the tests' helpers for a benchmark that reuses one, and waiting for a quiet machine before a timed run (benchmarks
on a shared 2-vCPU machine compare runs minutes apart).

A benchmark runs as `python benchmarks/bench_x.py` (its own folder on sys.path, so `from common import ...` works)
and imports the installed alpaca_ds package."""

from __future__ import annotations

import importlib
import multiprocessing as mp
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ALPACA = SHARED / "alpaca" / "alpaca_data.json"
LLAMA = SHARED / "tokenizers" / "llama"
SELF_INSTRUCT = SHARED / "self-instruct"


def missing_alpaca_data(name: str, hint: str = "") -> bool:
    """Whether the Alpaca data or the LLaMA tokenizer is missing from ../shared/data; if so, `name` says it skips."""
    missing = [p for p in (ALPACA, LLAMA / "tokenizer.model") if not p.is_file()]
    if missing:
        print(f"{name}: skipped, shared data not found: {', '.join(map(str, missing))}{hint}")
    return bool(missing)


def helpers_module(module: str) -> ModuleType:
    """A module of the tests' helper package (tests/helpers/), e.g. helpers_module("evaluation").make_tiny_model."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    return importlib.import_module(f"helpers.{module}")


def _spin(n: int) -> float:
    t = time.perf_counter()
    s = 0
    for j in range(n):
        s += j
    return time.perf_counter() - t


def cpu_check(n: int = 10_000_000) -> float:
    """How many cores' worth of work two CPU-bound processes get at once (2.0 = two free cores)."""
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_spin, [1000, 1000])  # both started
        one = min(pool.map(_spin, [n])[0] for _ in range(2))
        t = time.perf_counter()
        pool.map(_spin, [n, n], chunksize=1)
        two = time.perf_counter() - t
    return 2 * one / two


def add_quiet_options(ap, cores: float, seconds: float, before: str = "run") -> None:
    """--quiet and --quiet-timeout: wait_for_quiet's threshold and timeout before each timed `before`."""
    ap.add_argument(
        "--quiet",
        type=float,
        default=cores,
        help=f"before each {before}, wait until two CPU-bound processes get this many cores' worth of work",
    )
    ap.add_argument("--quiet-timeout", type=float, default=seconds, help="... or this many seconds")


def wait_for_quiet(threshold: float, timeout: float, pause: float = 5, n: int = 10_000_000) -> float:
    """Run the CPU check (spinning `n` iterations) until two processes get `threshold` cores or `timeout` seconds
    pass, `pause` seconds apart; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        cores = cpu_check(n)
        if cores >= threshold or time.monotonic() >= deadline:
            return cores
        time.sleep(pause)

"""Helpers for the generate tests: the teacher simulator as a real server process, configs, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_ds.config import load_config
from alpaca_ds.generate.config import GenerateConfig
from alpaca_ds.simulator.local import SimulatorProcess
from helpers.paths import ROOT, SHARED

OUR_SEEDS = ROOT / "seeds" / "seed_tasks.jsonl"
ORIGINAL_SEEDS = SHARED / "self-instruct" / "seed_tasks.jsonl"


def seeds_path() -> Path:
    for path in (OUR_SEEDS, ORIGINAL_SEEDS):
        if path.is_file():
            return path
    pytest.skip("no seed tasks: neither seeds/seed_tasks.jsonl nor ../shared/data/self-instruct/seed_tasks.jsonl")


def cli_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)
    return env


def Teacher(*flags: str) -> SimulatorProcess:
    """The simulator (`alpaca-ds teacher serve --port 0 ...`) in its own process, writing from the test seeds."""
    return SimulatorProcess(seeds_path(), *flags, env=cli_env(), cwd=ROOT)


def overrides(out_dir: Path, url: str, *extra: str) -> list[str]:
    """A run against the simulator at `url`: quick timeouts and retries, a $5 budget; `extra` last (it wins)."""
    api = [f"api.base_url={url}", "api.api_key_env=null", "api.timeout_s=5"]
    retries = ["api.backoff_initial_s=0.05", "api.backoff_max_s=0.5"]
    run = [f"out_dir={out_dir}", f"seed_tasks={seeds_path()}", "budget.max_usd=5", "progress=false"]
    return [*run, *api, *retries, *extra]


def gen_config(out_dir: Path, url: str, *extra: str) -> GenerateConfig:
    return load_config(GenerateConfig, None, overrides(out_dir, url, *extra))


def run_generate_cli(out_dir: Path, url: str, *extra: str, env: dict | None = None, timeout: float = 120):
    args = [a for o in overrides(out_dir, url, *extra) for a in ("--set", o)]
    return subprocess.run(
        [sys.executable, "-m", "alpaca_ds.cli", "generate", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env or cli_env(),
        timeout=timeout,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""The judge tests' pairs and settings: output pairs whose preference under the simulated judge is known, the judge
config against a simulator, its ledger, and `alpaca-ds evaluate judge` in the background."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from alpaca_ds.common.journal import read_jsonl
from alpaca_ds.config import load_config
from alpaca_ds.evaluate.config import JudgeConfig
from helpers.evaluation import cli, run_cli, write_outputs
from helpers.paths import ROOT

SECRET = "sk-test-judge-0123456789abcdef"
ENV = {"JUDGE_TEST_KEY": SECRET}


def make_pairs(tmp_path: Path, n: int) -> tuple[Path, Path, list]:
    """n pairs whose preference under the simulated judge's rule (alpaca_ds/simulator/judge.py) is known: B adds
    words -> 2, B cut short -> 1, the same words -> 1.5 (its position bias cancelled), NOVERDICT -> null."""
    a, b, expected = [], [], []
    for i in range(n):
        kind = i % 5
        out_a = f"answer A to task {i}" + " a" * (i % 7)
        if kind in (0, 1):
            # words of the judge prompt's own text: B shares 2, 5 or 1 more with the task, so it wins by as much
            out_b, pref = out_a + [" and more detail", " written clearly and more honestly", " more"][i % 3], 2
        elif kind == 2:
            out_b, pref = out_a[: max(1, len(out_a) // 2)], 1
        elif kind == 3:
            out_b, pref = out_a.replace("A", "B"), 1.5
        else:
            out_b, pref = "NOVERDICT " + out_a, None
        ds = ["selfinstruct", "koala"][i % 2]
        a.append(
            {
                "dataset": ds,
                "instruction": f"Task {i}: do thing {{x}} number {i}.",
                "output": out_a,
                "generator": "model_a",
            }
        )
        b.append(
            {
                "dataset": ds,
                "instruction": f"Task {i}: do thing {{x}} number {i}.",
                "output": out_b,
                "generator": "model_b",
            }
        )
        expected.append(pref)
    return write_outputs(tmp_path / "a.json", a), write_outputs(tmp_path / "b.json", list(reversed(b))), expected


def overrides(url: str, out: Path, *extra: str) -> list[str]:
    """The discrete judge unless `extra` says mode=weighted (a later --set wins)."""
    api = [f"api.base_url={url}", "api.model=judge-sim", "api.api_key_env=JUDGE_TEST_KEY", "api.encoding=cl100k_base"]
    budget = ["budget.prompt_usd_per_1m=1000", "budget.completion_usd_per_1m=1000", "budget.max_usd=100"]
    run = ["api.backoff_initial_s=0.01", "concurrency=4", "progress=false", "mode=discrete"]
    return [f"out_dir={out}", *api, *budget, *run, *extra]


def config(a: Path, b: Path, url: str, out: Path, *extra: str) -> JudgeConfig:
    return load_config(JudgeConfig, None, [f"a={a}", f"b={b}", *overrides(url, out, *extra)])


def ledger_results(out: Path) -> list[dict]:
    return [e for e in read_jsonl(out / "calls.jsonl")[0] if e["t"] == "result"]


def judge_args(a, b, url, out, *extra) -> list[str]:
    """`evaluate judge` of outputs `a` against `b` with the settings of overrides(), as CLI arguments."""
    args = ["evaluate", "judge", "--a", str(a), "--b", str(b)]
    for item in overrides(url, out, *extra):
        args += ["--set", item]
    return args


def run_judge(a, b, url, out, *extra) -> subprocess.CompletedProcess:
    """`alpaca-ds evaluate judge` to its end, with the test key in its environment."""
    return run_cli(*judge_args(a, b, url, out, *extra), env=ENV)


def start_judge(a, b, url, out, *extra) -> subprocess.Popen:
    """`alpaca-ds evaluate judge` in its own process group, with the test key in its environment."""
    return subprocess.Popen(
        cli(*judge_args(a, b, url, out, *extra)),
        cwd=ROOT,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

"""`alpaca-ds quickstart`: the whole pipeline offline, interrupted during training and resumed, and its report
checked number by number against the files the stages wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alpaca_ds.config import load_config
from alpaca_ds.dataset.config import DataBuildConfig
from alpaca_ds.evaluate.config import AnswerConfig, JudgeConfig
from alpaca_ds.generate.config import GenerateConfig
from alpaca_ds.quickstart import layout
from alpaca_ds.quickstart.config import QuickstartConfig
from alpaca_ds.train.config import TrainConfig
from helpers.paths import ROOT

pytestmark = pytest.mark.slow


def quickstart(out: Path, *args: str) -> subprocess.Popen:
    # from another directory than the repository: the default config takes its paths from the repository
    return subprocess.Popen(
        [sys.executable, "-m", "alpaca_ds.cli", "quickstart", "--quick", "--out", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=out.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_quickstart_interrupted_in_training_resumes_and_reports_its_own_numbers(tmp_path):
    out = tmp_path / "qs"
    metrics = out / "run" / "metrics.jsonl"
    started = time.monotonic()
    proc = quickstart(out)
    # interrupt (Ctrl-C) once the training has passed its first checkpoint (every 10 steps in the tiny recipe)
    while proc.poll() is None and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 12):
        time.sleep(0.2)
        assert time.monotonic() - started < 400, "the training did not reach step 12"
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr[-3000:]
    assert "interrupted during train; rerun the same command to continue" in stderr
    assert "Traceback" not in stdout + stderr.split("stopping the training")[-1]
    state = json.loads((out / "quickstart.json").read_text())
    assert set(state["steps"]) == {"generate", "data"} and state["interrupted"]["train"] > 0
    latest = (out / "run" / "checkpoints" / "latest").read_text().strip()
    assert latest in ("step-00000010", "step-00000020"), latest
    # no rank outlives the interrupt
    pids = subprocess.run(["pgrep", "-f", str(out / "configs" / "train.yaml")], capture_output=True, text=True)
    assert not pids.stdout.strip(), pids.stdout
    kept = {p: p.stat().st_mtime_ns for p in (out / "generated" / "regen.json", out / "tokenized" / "manifest.json")}

    proc = quickstart(out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr[-3000:]
    print(stdout)
    print(f"quickstart --quick, interrupted and resumed: {time.monotonic() - started:.0f} s")
    assert "[1/6] generate: done in an earlier run" in stdout and "[2/6] data: done in an earlier run" in stdout
    assert f"resumed from {latest}" in stdout
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "a finished step was redone"
    for n, step in enumerate(["train", "export", "evaluate answer", "evaluate judge"], 3):
        assert f"[{n}/6] {step}:" in stdout
    report = (out / "report.md").read_text()
    check_report(out, report, quick=True)
    assert state_of(out)["steps"]["train"]["interrupted_seconds"] > 0

    # a third run finds everything done and redoes nothing
    proc = quickstart(out)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("done in an earlier run") == 6


README_RUN = ROOT / "runs" / "quickstart"


@pytest.mark.skipif(
    not (README_RUN / "report.md").is_file(),
    reason=f"no {README_RUN}/report.md: the README's first command (`alpaca-ds quickstart`, run from "
    "the repository) writes it, and CI runs it before the tests",
)
def test_the_readme_quickstart_report_holds_its_run_numbers():
    check_report(README_RUN, (README_RUN / "report.md").read_text(), quick=False)


def state_of(out: Path) -> dict:
    return json.loads((out / "quickstart.json").read_text())


def check_report(out: Path, report: str, quick: bool) -> None:
    cfg = load_config(QuickstartConfig, None, [], defaults=layout.default_config())
    cfg = cfg.with_quick() if quick else cfg
    settings = cfg.stage_configs()
    stats = json.loads((out / "generated" / "stats.json").read_text())
    cost = json.loads((out / "generated" / "cost.json").read_text())
    manifest = json.loads((out / "tokenized" / "manifest.json").read_text())
    rows = _rows(out / "run" / "metrics.jsonl")
    answers = json.loads((out / "eval" / "quickstart-tiny" / "model_outputs.json").read_text())
    reference = json.loads((out / "eval" / "reference" / "model_outputs.json").read_text())
    annotations = json.loads((out / "eval" / "judge" / "annotations.json").read_text())
    win = json.loads((out / "eval" / "judge" / "winrate.json").read_text())["overall"]
    judge_cost = json.loads((out / "eval" / "judge" / "cost.json").read_text())
    state = state_of(out)

    # generation: counts, every rejection reason, the cost table
    assert stats["accepted"] == stats["target"] == settings["generate"].num_instructions
    assert (
        f"**{stats['accepted']}/{stats['target']}** instructions accepted from {stats['candidates']['parsed']} "
        "parsed candidates" in report
    )
    assert stats["candidates"]["rejected"], "the simulator's noise gives every run rejections"
    for reason, count in stats["candidates"]["rejected"].items():
        assert f"| rejected: {reason} | {count} |" in report
    generate_row = next(line for line in report.splitlines() if line.startswith("| generate | gpt-3.5-turbo-instruct"))
    for number in (
        f"{cost['prompt_tokens']:,}",
        f"{cost['completion_tokens']:,}",
        f"${cost['spent_usd']:,.4f}",
        f"| {stats['requests']['attempts']} |",
    ):
        assert number in generate_row, (number, generate_row)
    assert 0 < cost["spent_usd"] <= settings["generate"].budget.max_usd
    judge_row = next(line for line in report.splitlines() if line.startswith("| judge | gpt-4o-mini"))
    for number in (
        f"{judge_cost['prompt_tokens']:,}",
        f"${judge_cost['spent_usd']:,.4f}",
        f"| {2 * len(annotations)} |",
    ):
        assert number in judge_row, (number, judge_row)

    # dataset
    c = manifest["counts"]
    assert c["records"] == settings["generate"].num_instructions
    assert f"{c['records']} records -> {c['examples']} examples" in report
    for name, split in manifest["splits"].items():
        assert f"| {name} | {split['examples']} | {split['tokens']:,} |" in report

    # training: every step logged once (the resumed run replaced the interrupted run's lines past its checkpoint)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    val = [r for r in rows if "val_loss" in r]
    assert f"| optimizer steps | {rows[-1]['step']} (" in report
    assert f"| train loss, first step | {rows[0]['loss']:.4f} |" in report
    assert f"| train loss, last step | {rows[-1]['loss']:.4f} |" in report
    assert f"| validation loss (step {val[-1]['step']}) | {val[-1]['val_loss']:.4f} |" in report
    assert rows[-1]["loss"] < rows[0]["loss"], "the tiny model learns something"
    assert "![loss curve](run/loss.png)" in report
    assert (out / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"ZeRO stage 3, bf16 on, {cfg.ranks} ranks" in report

    # export: verified, and equal to the trainer's own export
    export = state["steps"]["export"]
    assert export["logits_max_diff"] <= 2**-7 and export["max_tensor_diff_vs_final"] == 0
    assert f"max |difference| **{export['logits_max_diff']:.3g}**" in report

    # evaluation
    assert len(answers) == len(reference) == len(annotations) == settings["answer"].limit
    assert [a["instruction"] for a in answers] == [r["instruction"] for r in reference]
    assert {a["generator"] for a in answers} == {"quickstart-tiny"}
    assert all(a["preference"] in (1, 2, 1.5) for a in annotations), "the simulator's judge gave a verdict"
    assert f"wrote **{len(answers)}** answers" in report
    assert (
        f"**win rate of quickstart-tiny over the reference: {win['win_rate']:.1f}% ± {win['standard_error']:.1f}**"
    ) in report
    assert f"wins {win['n_wins']}, losses {win['n_wins_base']}, ties {win['n_draws']}" in report

    # times: the table's total is the sum of the steps (the interrupted training counted in)
    total = sum(s["seconds"] for s in state["steps"].values())
    assert f"| **total** | | **{total:.1f}** |" in report

    # the commands by hand, and the configs they name, which load as their commands load them
    block = report.split("## Each step by hand")[1].split("```sh\n")[1].split("```")[0]
    schemas = {
        "generate": GenerateConfig,
        "data": DataBuildConfig,
        "train": TrainConfig,
        "answer": AnswerConfig,
        "judge": JudgeConfig,
    }
    cwd = state["invocations"][-1]["cwd"]

    def shown(path: Path) -> str:  # as the run names it: relative to where it ran when --out was relative
        return str(path) if str(path) in block else os.path.relpath(path, cwd)

    for name, schema in schemas.items():
        path = out / "configs" / f"{name}.yaml"
        assert f"--config {shown(path)}" in block
        load_config(schema, path)
    assert f"alpaca-ds export {state['steps']['export']['checkpoint']} {shown(out / 'export')}" in block
    assert "alpaca-ds teacher serve --port 8765" in block
    assert "http://127.0.0.1:8765/v1" in (out / "configs" / "generate.yaml").read_text()

"""The alpaca-ds command: help everywhere, the offline default job, and errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from alpaca_ds.cli import cli
from alpaca_ds.dataset.shards import TokenizedDataset
from helpers.paths import ROOT


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "alpaca_ds.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_every_command_has_help():
    runner = CliRunner()
    commands = dict(all_commands(cli))
    assert ("data", "build") in commands and ("data", "inspect") in commands
    for path, command in [((), cli), *commands.items()]:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert command.help and command.help.split("\n")[0][:40] in result.output.replace("\n  ", " ")


def test_default_build_then_inspect(tmp_path):
    out = tmp_path / "ds"
    result = run_cli("data", "build", "--set", f"output={out}", "--set", "workers=1")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    assert f"train {train['examples']} examples / {train['tokens']} tokens" in result.stdout
    assert "ex/s" in result.stderr  # the progress bar reports throughput
    result = run_cli("data", "inspect", str(out), "--micro-batch", "2")
    assert result.returncode == 0, result.stderr
    assert f"{train['examples']} examples, {train['tokens']} tokens" in result.stdout
    assert "packed to 512" in result.stdout and "micro-batch 2" in result.stdout
    lines = run_cli("data", "inspect", str(out), "--jsonl").stdout.splitlines()
    ds = TokenizedDataset(out)
    assert len(lines) == len(ds)
    row = json.loads(lines[7])
    assert row == {"index": 7, "input_ids": ds[7]["input_ids"].tolist(), "labels": ds[7]["labels"].tolist()}


@pytest.mark.slow
def test_errors_are_messages_not_tracebacks(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: x.json\noutput: out\ntokenizer: tok\nmax_lenth: 3\n")
    result = run_cli("data", "build", "--config", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "did you mean 'max_length'" in result.stderr
    result = run_cli("data", "inspect", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "no manifest.json" in result.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    result = run_cli("data", "build", "--set", f"input={broken}", "--set", f"output={tmp_path / 'o'}")
    assert result.returncode == 2 and f"{broken}:2: invalid JSON" in result.stderr
    result = run_cli("data", "build", "--set", f"input={broken}", "--set", f"output={tmp_path / 'o'}", "--skip-invalid")
    assert result.returncode == 0 and "invalid skipped 1" in result.stdout

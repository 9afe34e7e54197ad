"""One-way imports: each stage imported alone in a fresh interpreter pulls in only what it may."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


def modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module, forbidden", [
    ("alpaca_ds.dataset.build", {"deepspeed"}),
    ("alpaca_ds.dataset.collate", {"deepspeed"}),
    ("alpaca_ds.dataset.inspect", {"deepspeed", "torch"}),
    # the builder's worker processes load only this: no transformers, no torch
    ("alpaca_ds.dataset.encode", {"deepspeed", "torch", "transformers"}),
    ("alpaca_ds.cli", {"deepspeed", "torch", "transformers"}),
    ("alpaca_ds.config", {"torch", "transformers"}),
])
def test_stage_imports(module, forbidden):
    loaded = modules_after_import(module)
    assert module in loaded
    assert not forbidden & {m.split(".")[0] for m in loaded}


def test_nothing_imports_cli():
    for path in (ROOT / "alpaca_ds").rglob("*.py"):
        if path.name != "cli.py":
            assert "alpaca_ds.cli" not in path.read_text(), path

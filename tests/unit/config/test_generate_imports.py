"""The generate stage imports no torch, transformers or deepspeed (each module alone, in a fresh interpreter)."""

from __future__ import annotations

import pytest

from helpers.imports import modules_after_import

MODULES = [
    "alpaca_ds.generate.run",
    "alpaca_ds.generate.online",
    "alpaca_ds.generate.rundir",
    "alpaca_ds.simulator.local",
    "alpaca_ds.generate.prompts",
    "alpaca_ds.generate.filters",
    "alpaca_ds.generate.seeds",
    "alpaca_ds.generate.dryrun",
    "alpaca_ds.generate.rouge",
    "alpaca_ds.generate.rouge_kernels",
    "alpaca_ds.generate.rouge_scan",
]


@pytest.mark.parametrize("module", MODULES)
def test_generate_imports_no_torch(module):
    loaded = {m.split(".")[0] for m in modules_after_import(module)}
    assert not {"torch", "transformers", "deepspeed"} & loaded, module


def test_a_run_imports_no_torch():
    # what a generate run loads at run time too: the openai client, tiktoken, the ROUGE index, the HTTP server
    loaded = {
        m.split(".")[0]
        for m in modules_after_import(
            "alpaca_ds.generate.run, alpaca_ds.generate.online, openai, tiktoken, aiohttp, alpaca_ds.generate.rouge"
        )
    }
    assert "openai" in loaded and not {"torch", "transformers", "deepspeed"} & loaded

"""Helpers for the evaluation tests: a tiny random model folder shaped like the trainer's export, the simulator over
a real socket, CLI subprocesses, and headless chromium for the browser tests."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.paths import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and importlib.util.find_spec("selenium")),
    reason="a browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
    ".ci/run installs them) and selenium (pip install -e '.[test]')",
)


def browser():
    """Headless chromium driven by Selenium through chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def random_llama(
    vocab_size: int,
    *,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int | None = None,
    seed: int = 0,
    **config,
):
    """A LlamaForCausalLM of these sizes (`intermediate`: 2 x hidden by default) with random weights drawn from
    `seed`; `config`: more LlamaConfig fields."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        **config,
    )
    return LlamaForCausalLM(config)


def make_tiny_model(folder: Path, seed: int = 0, **sizes: int) -> Path:
    """A random LlamaForCausalLM with the project's tokenizer and Alpaca's [PAD]: the folder shape the trainer
    exports (config, safetensors, tokenizer, generation_config), without DeepSpeed. `sizes`: random_llama's
    (default: 1 layer, hidden 32, 2 heads, 1 KV head)."""
    from transformers import GenerationConfig

    from alpaca_ds.dataset.tokenizer import add_missing_special_tokens, load_tokenizer

    tokenizer = load_tokenizer(str(ROOT / "data" / "tokenizer"))
    add_missing_special_tokens(tokenizer)
    sizes = {"layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1, **sizes}
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model = random_llama(len(tokenizer), seed=seed, max_position_embeddings=2048, **sizes, **ids)
    model.generation_config = GenerationConfig(**ids)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cli(*args: str, **kwargs) -> list[str]:
    return [sys.executable, "-m", "alpaca_ds.cli", *args]


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})}
    )


class Background:
    """A CLI command running in the background until it prints a line matching `ready` (e.g. its URL)."""

    def __init__(self, *args: str, ready: str, timeout: float = 120, cwd: Path = ROOT):
        self.proc = subprocess.Popen(
            cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, start_new_session=True
        )
        self.lines: list[str] = []
        deadline = time.time() + timeout
        pattern = re.compile(ready)
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read()
                raise RuntimeError(f"{' '.join(args)} ended before it was ready:\n{''.join(self.lines)}\n{err[-3000:]}")
            self.lines.append(line)
            m = pattern.search(line)
            if m:
                self.match = m
                break
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{' '.join(args)} not ready in {timeout} s")

    def stop(self, sig=None) -> tuple[str, str]:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        out, err = self.proc.communicate()
        return "".join(self.lines) + (out or ""), err or ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def simulator(**kwargs):
    """The project's simulator (alpaca_ds/simulator) in this process on a loopback port, as the judge or the
    moderation endpoint: `.base_url`, `.sim.answered` (prompt digest -> answers), `.sim.seen` (request body
    digest -> attempts), `.sim.keys`, `.sim.logprobs_returned`, `.sim.moderation.inputs`."""
    from alpaca_ds.simulator.local import LocalSimulator

    return LocalSimulator(ROOT / "seeds" / "seed_tasks.jsonl", **kwargs)


def write_outputs(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path

"""Helpers for the evaluation tests: a tiny random model folder shaped like the trainer's export, the shared data
paths, a deterministic judge that speaks the OpenAI protocol over a real socket, and CLI subprocesses."""
from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SELFINSTRUCT = SHARED / "self-instruct" / "user_oriented_instructions.jsonl"
DAVINCI = SHARED / "alpaca_eval" / "text_davinci_003_outputs.json"
ALPACA_7B = SHARED / "alpaca_eval" / "alpaca-7b_outputs.json"

needs_eval_data = pytest.mark.skipif(
    not (SELFINSTRUCT.is_file() and DAVINCI.is_file() and ALPACA_7B.is_file()),
    reason=f"the public eval sets are not at {SHARED} (self-instruct/user_oriented_instructions.jsonl, "
           "alpaca_eval/*_outputs.json; they are never committed)")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and importlib.util.find_spec("selenium")),
    reason="a browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
           ".ci/run installs them) and selenium (pip install -e '.[test]')")


def browser():
    """Headless chromium driven by Selenium through chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def make_tiny_model(folder: Path, seed: int = 0, layers: int = 1, hidden: int = 32) -> Path:
    """A random LlamaForCausalLM with the project's tokenizer and Alpaca's [PAD]: the folder shape the trainer
    exports (config, safetensors, tokenizer, generation_config), without DeepSpeed."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from alpaca_ds.dataset.tokenizer import add_missing_special_tokens, load_tokenizer
    tokenizer = load_tokenizer(str(ROOT / "data" / "tokenizer"))
    add_missing_special_tokens(tokenizer)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, **kwargs) -> list[str]:
    return [sys.executable, "-m", "alpaca_ds.cli", *args]


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


class Background:
    """A CLI command running in the background until it prints a line matching `ready` (e.g. its URL)."""

    def __init__(self, *args: str, ready: str, timeout: float = 120, cwd: Path = ROOT):
        self.proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=cwd, start_new_session=True)
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


# --------------------------------------------------------------------------------------------------------------
# A deterministic judge over a real socket


_SECTION = re.compile(r"## Output \(a\)\n\n(.*?)\n\n## Output \(b\)\n\n(.*?)\n\n## Your verdict", re.S)


class LoopbackServer:
    """An aiohttp app on a free loopback port, run in a thread: `with Server() as s:` serves `routes()` (POST)
    at `s.url` (http://127.0.0.1:PORT/v1)."""

    def routes(self) -> list:
        raise NotImplementedError

    def __enter__(self):
        from aiohttp import web
        ready = threading.Event()

        async def main():
            app = web.Application()
            for path, handler in self.routes():
                app.router.add_post(path, handler)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
            self._stop = asyncio.Event()
            ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(main(),), daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class JudgeSim(LoopbackServer):
    """An OpenAI-compatible judge (chat and completions) that prefers the longer answer; on equal lengths it
    always says "Output (a)" (a pure position bias, so the two orders disagree: a tie); an answer containing
    NOVERDICT makes it reply without a verdict. Usage: prompt chars / 4 prompt tokens, 3 completion tokens.
    `fail_first` answers 429 (Retry-After 0) to that many first attempts of every distinct prompt."""

    def __init__(self, latency: float = 0.0, fail_first: int = 0):
        self.latency = latency
        self.fail_first = fail_first
        self.calls: Counter = Counter()      # prompt digest -> answered calls
        self.attempts: Counter = Counter()   # prompt digest -> attempts (incl. 429s)
        self.keys: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def digest(prompt: str) -> str:
        return hashlib.sha256(prompt.encode()).hexdigest()

    def verdict(self, prompt: str) -> str:
        m = _SECTION.search(prompt)
        if not m:
            return "I cannot tell."
        a, b = m.group(1), m.group(2)
        if "NOVERDICT" in a + b:
            return "Both are fine."
        if len(a) == len(b):
            return "Output (a)"
        return "Output (a)" if len(a) > len(b) else "Output (b)"

    async def handle(self, request):
        from aiohttp import web
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        self.keys.add(request.headers.get("Authorization", ""))
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        prompt = prompt[0] if isinstance(prompt, list) else prompt
        d = self.digest(prompt)
        with self._lock:
            self.attempts[d] += 1
            if self.attempts[d] <= self.fail_first:
                return web.json_response({"error": {"message": "slow down (simulated)", "type": "requests",
                                                    "code": "rate_limit_exceeded", "param": None}},
                                         status=429, headers={"Retry-After": "0"})
        if self.latency:
            await asyncio.sleep(self.latency)
        text = self.verdict(prompt)
        with self._lock:
            self.calls[d] += 1
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": 3, "total_tokens": len(prompt) // 4 + 3}
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        return web.json_response({"id": "judge-" + d[:12], "object": "chat.completion" if chat else "text_completion",
                                  "created": 0, "model": body["model"], "choices": [choice], "usage": usage})

    def routes(self):
        return [("/v1/chat/completions", self.handle), ("/v1/completions", self.handle)]


def write_outputs(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path

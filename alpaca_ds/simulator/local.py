"""Starting the SIMULATOR: as a server process (`alpaca-ds teacher serve`), or in a background thread of this
process on a free loopback port (`with LocalSimulator(seeds) as sim: ... sim.base_url`), which lives and dies with
its user (the quickstart, tests, benchmarks: no process to clean up after a kill)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from alpaca_ds.common.serving import serve_until_interrupted
from alpaca_ds.generate.seeds import load_seed_tasks
from alpaca_ds.simulator.batch import BatchApi, BatchBehaviour
from alpaca_ds.simulator.server import Faults, Simulator
from alpaca_ds.simulator.teacher import DEFAULT_MODEL, TeacherSim


def build(
    seeds_path: str | Path,
    seed: int = 0,
    tasks: int = 20,
    noise: float = 0.2,
    latency: float = 0.0,
    jitter: float = 0.0,
    faults: Faults = Faults(),
    require_key: str | None = None,
    price=None,
    batch: BatchBehaviour | None = BatchBehaviour(),
    logprobs: bool = True,
    moderation_words: tuple[str, ...] = (),
) -> Simulator:
    """A simulator writing from the seed tasks at `seeds_path`; `batch` None: without the Batch API; `logprobs`
    False: answers without log-probabilities; `moderation_words`: what /v1/moderations flags."""
    content = TeacherSim([t.example for t in load_seed_tasks(seeds_path)], seed=seed, tasks=tasks, noise=noise)
    content._enc(DEFAULT_MODEL)  # load tiktoken before the first request, so it is not slow
    return Simulator(
        content,
        latency=latency,
        jitter=jitter,
        faults=faults,
        require_key=require_key,
        price=price,
        batch=BatchApi(batch) if batch is not None else None,
        logprobs=logprobs,
        moderation_words=tuple(moderation_words),
    )


def serve(sim: Simulator, port: int, host: str = "127.0.0.1", announce=print) -> None:
    """Run the simulator until interrupted; announces 'teacher simulator listening on http://HOST:PORT/v1'."""
    serve_until_interrupted(
        sim.app(),
        host,
        port,
        lambda bound: announce(f"teacher simulator listening on http://{host}:{bound}/v1"),
        backlog=1024,
    )


class LocalSimulator:
    """`with LocalSimulator(seeds) as s:` serves the simulator at s.base_url (http://127.0.0.1:PORT/v1); keyword
    arguments as `build`'s. `s.sim` is the Simulator itself (its stats, counters, bill)."""

    def __init__(self, seeds_path: str | Path, host: str = "127.0.0.1", **kwargs):
        self.sim = build(seeds_path, **kwargs)
        self.host = host
        self.base_url: str | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> LocalSimulator:
        from aiohttp import web

        ready = threading.Event()

        async def main():
            runner = web.AppRunner(self.sim.app(), access_log=None, handle_signals=False)
            await runner.setup()
            try:
                await web.TCPSite(runner, self.host, 0, backlog=1024).start()
                self.base_url = f"http://{self.host}:{runner.addresses[0][1]}/v1"
                self._stop = asyncio.Event()
                ready.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()

        def thread():
            try:
                self._loop.run_until_complete(main())
            except BaseException as e:  # noqa: BLE001 - reported to the caller below
                self._error = e
                ready.set()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=thread, name="simulator", daemon=True)
        self._thread.start()
        ready.wait(60)
        if self.base_url is None:
            raise RuntimeError(f"the local simulator did not start: {self._error!r}")
        return self

    def stats(self) -> dict:
        return self.sim.stats()

    def __exit__(self, *exc) -> None:
        if self.base_url is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


class SimulatorProcess:
    """`alpaca-ds teacher serve --port 0 FLAGS...` in a process of its own (its own core, a real socket), for
    tests and benchmarks that must not share a CPU with the client: `.url`, `.stats()`, `.close()`."""

    def __init__(self, seeds_path: str | Path, *flags: str, env: dict | None = None, cwd: str | Path | None = None):
        import re
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alpaca_ds.cli",
                "teacher",
                "serve",
                "--port",
                "0",
                "--seeds",
                str(seeds_path),
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        line = self.proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"the simulator did not start: {line!r} {self.proc.stderr.read()}")
        self.url = found.group(0)

    def stats(self) -> dict:
        import json
        import urllib.request

        with urllib.request.urlopen(self.url.replace("/v1", "/sim/stats"), timeout=30) as r:
            return json.loads(r.read())

    def close(self) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

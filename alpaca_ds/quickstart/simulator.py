"""The local teacher SIMULATOR (alpaca_ds/generate/teacher.py) on a free loopback port, in a background thread.

The same server `alpaca-ds teacher serve --port 0` runs, started in-process so that it lives and dies with the
quickstart (no process to clean up after a kill). It writes tasks for `generate` and, in its judge mode, verdicts
for `evaluate judge`.
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from alpaca_ds.generate.seeds import load_seed_tasks
from alpaca_ds.generate.teacher import DEFAULT_MODEL, TeacherSim


class LocalTeacher:
    """`with LocalTeacher(seeds) as t:` serves the simulator at t.base_url (http://127.0.0.1:PORT/v1)."""

    def __init__(self, seeds_path: str | Path, seed: int = 0, host: str = "127.0.0.1"):
        self.sim = TeacherSim([t.example for t in load_seed_tasks(seeds_path)], seed=seed)
        self.host = host
        self.base_url: str | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> "LocalTeacher":
        from aiohttp import web
        self.sim._enc(DEFAULT_MODEL)  # load tiktoken before the first request, as `teacher serve` does
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
        self._thread = threading.Thread(target=thread, name="teacher-simulator", daemon=True)
        self._thread.start()
        ready.wait(60)
        if self.base_url is None:
            raise RuntimeError(f"the local teacher simulator did not start: {self._error!r}")
        return self

    def requests(self) -> dict:
        """Requests the simulator answered, by outcome."""
        return dict(self.sim.counts)

    def __exit__(self, *exc) -> None:
        if self.base_url is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

"""Run an aiohttp application until Ctrl-C: how every HTTP server here (teacher simulator, serve, human A/B) runs;
and a free loopback port for a server or a rendezvous that must be named before it starts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from alpaca_ds.common.errors import UserError


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it), e.g. a DeepSpeed rendezvous port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_until_interrupted(app, host: str, port: int, on_ready: Callable[[int], None], backlog: int = 128) -> None:
    """Serve `app` on host:port until interrupted; `on_ready(port)` is called with the bound port once it listens
    (`port` 0 picks a free one). A port that cannot be bound is a UserError that says what to change."""
    from aiohttp import web

    async def main():
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, backlog=backlog).start()
        except OSError as e:
            await runner.cleanup()
            raise UserError(
                f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port (0 = any free)"
            ) from None
        on_ready(runner.addresses[0][1])
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

"""CPU per online request: `ApiClient.call` with api.http_backend aiohttp (one aiohttp POST with the openai
client's headers) against the request sent through the openai client itself, with its aiohttp transport (what
http_backend aiohttp did before, the baseline) and with its default httpx transport (http_backend httpx); and a
bare aiohttp POST with the same body and parse, as the floor.

    python benchmarks/bench_client.py [--requests 640] [--concurrency 64] [--repeats 3]

A loopback aiohttp server, in a process of its own, answers every POST at once with one fixed body the size of a
5-prompt answer (~22 KB, 5 choices); the client sends `requests` requests with 5 prompts each, `concurrency` at a
time, after a warm-up round. Reported: the client process's CPU per request (what the generator's event loop
pays for each request in flight) and requests/s, alternating the three paths in each repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

import orjson

from alpaca_ds.api.client import ApiClient
from alpaca_ds.api.config import ApiConfig

SERVER = """
import json, sys
from aiohttp import web
choice = lambda i: {"index": i, "text": "word " * 900, "finish_reason": "stop", "logprobs": None}
body = json.dumps({"id": "x", "object": "text_completion", "created": 1, "model": "m",
                   "choices": [choice(i) for i in range(5)], "usage": {"prompt_tokens": 10, "completion_tokens": 10}})
async def answer(request):
    await request.read()
    return web.Response(text=body, content_type="application/json")
app = web.Application()
app.router.add_post("/v1/completions", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *_: print("ready", flush=True))
"""
PROMPTS = ["\n".join(f"{i}. Instruction: a seed task, number {i}, as a prompt shows it" for i in range(60))] * 5


async def run(url: str, path: str, requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU seconds per request, requests/s) of one path."""
    client = ApiClient(ApiConfig(base_url=url, http_backend="httpx" if path == "openai, httpx" else "aiohttp"), None)
    if path == "openai, aiohttp":
        client.backend = "openai"  # anything but "aiohttp": `call` posts through the openai client, built with its
        # aiohttp transport (DefaultAioHttpClient) as http_backend aiohttp builds it for the Batch API
    session = None
    if path == "bare aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            if session is None:
                outcome = await client.call(PROMPTS, stop=["\n20"], logit_bias=None)
            else:
                endpoint, body = client.request(PROMPTS, ["\n20"], None)
                headers = {"Content-Type": "application/json"}
                async with session.post(
                    url.removesuffix("/v1") + endpoint, data=orjson.dumps(body), headers=headers
                ) as r:
                    outcome = client.parse((await r.read()).decode(), len(PROMPTS))
            assert outcome.ok, outcome

    await asyncio.gather(*(one() for _ in range(concurrency)))  # warm-up: connections open
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one() for _ in range(requests)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await client.close()
    if session is not None:
        await session.close()
    return cpu / requests, requests / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=640)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the loopback server did not start")
        url = f"http://127.0.0.1:{port}/v1"
        paths = ("openai, aiohttp", "openai, httpx", "aiohttp POST", "bare aiohttp")
        rows = {p: [] for p in paths}
        for r in range(args.repeats):
            for p in paths:
                rows[p].append(asyncio.run(run(url, p, args.requests, args.concurrency)))
                cpu, rate = rows[p][-1]
                print(f"repeat {r + 1} {p:>15}: {1000 * cpu:.2f} ms CPU per request, {rate:.0f} req/s", flush=True)
    finally:
        server.terminate()
        server.wait()
    print()
    base = statistics.median(c for c, _ in rows["openai, aiohttp"])
    for p in paths:
        cpu = statistics.median(c for c, _ in rows[p])
        print(
            f"{p:>15}: median {1000 * cpu:.2f} ms CPU per request ({cpu / base:.2f}x the openai client's with its aiohttp transport)"
        )
    print(json.dumps({p: [round(1000 * c, 3) for c, _ in v] for p, v in rows.items()}))


if __name__ == "__main__":
    main()

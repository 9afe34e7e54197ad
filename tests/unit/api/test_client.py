"""The online request path (api/client.py): the lean aiohttp POST (api.http_backend: aiohttp, the default) sends
what the official openai client sends and reads every answer as the openai client's path (http_backend: httpx)
does, against a loopback aiohttp server that answers each request with a scripted status, headers and body,
or breaks the connection, or never answers."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import web

from alpaca_ds.api.client import ApiClient, env_proxy
from alpaca_ds.api.config import ApiConfig
from alpaca_ds.common.errors import UserError

KEY = "sk-test-0123456789"
OK = {
    "id": "x",
    "object": "text_completion",
    "model": "m",
    "choices": [{"index": i, "text": f"answer {i}", "finish_reason": "stop", "logprobs": None} for i in range(2)],
    "usage": {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18},
}

# scenario -> (status, headers, body); "drop": the server closes the connection after reading the request,
# "hang": it never answers
SCRIPTS = {
    "ok": (200, {}, json.dumps(OK)),
    "ok without usage": (200, {}, json.dumps({**OK, "usage": None})),
    "malformed": (200, {}, json.dumps(OK)[:40]),
    "wrong shape": (200, {}, json.dumps({"choices": [{"index": 0}]})),
    "quota": (429, {}, json.dumps({"error": {"message": "no quota", "type": "x", "code": "insufficient_quota"}})),
    "rate limited": (429, {"retry-after-ms": "1500"}, json.dumps({"error": {"message": "slow down"}})),
    "rate limited, date": (429, {"retry-after": "3"}, "not json"),
    "401": (401, {}, json.dumps({"error": {"message": "bad key", "code": "invalid_api_key"}})),
    "403": (403, {}, json.dumps({"error": {"message": "no"}})),
    "404": (404, {}, json.dumps({"error": {"message": "no such model", "code": "model_not_found"}})),
    "408": (408, {}, ""),
    "409": (409, {}, json.dumps({"message": "conflict, no error object"})),
    "500": (500, {"retry-after": "2"}, json.dumps({"error": {"message": "oops"}})),
    "503": (503, {}, "<html>unavailable</html>"),
    "400": (400, {}, json.dumps({"error": {"message": "max_tokens too large", "code": None}})),
    "422": (422, {}, "[1, 2]"),
    "drop": None,
    "hang": None,
}


class Server:
    """A loopback aiohttp server: the scenario is the request's path segment before /completions."""

    def __init__(self, port: int = 0):
        self.port = port
        self.seen: list[tuple[dict, dict]] = []  # (headers, body) of each request

    async def handle(self, request: web.Request):
        body = await request.json()
        self.seen.append((dict(request.headers), body))
        name = request.match_info["scenario"].replace("_", " ")
        if name in ("drop", "hang"):
            if name == "drop":
                request.transport.close()
            await self.done.wait()
        status, headers, text = SCRIPTS[name]
        return web.Response(status=status, headers=headers, text=text, content_type="application/json")

    async def __aenter__(self):
        self.done = asyncio.Event()  # set on exit: lets the handlers that never answer end
        app = web.Application()
        app.router.add_post("/{scenario}/v1/completions", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.done.set()
        await self.runner.cleanup()


def api(base_url: str, backend: str) -> ApiConfig:
    return ApiConfig(base_url=base_url, http_backend=backend, timeout_s=0.5, n=1)


async def outcomes(base_url: str) -> dict:
    """backend -> the outcome of one request to `base_url` (two prompts)"""
    got = {}
    for backend in ("aiohttp", "httpx"):
        client = ApiClient(api(base_url, backend), KEY)
        try:
            got[backend] = await client.call(
                ["first prompt", "second prompt"], stop=["\n20"], logit_bias={"50256": -100}
            )
        finally:
            await client.close()
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scenario", list(SCRIPTS))
def test_each_answer_is_read_as_the_openai_client_reads_it(scenario):
    async def main():
        async with Server() as server:
            got = await outcomes(f"http://127.0.0.1:{server.port}/{scenario.replace(' ', '_')}/v1")
        return server, got

    server, got = asyncio.run(main())
    lean, reference = got["aiohttp"], got["httpx"]
    fields = ("kind", "http", "choices", "usage", "maybe_billed", "retryable", "fatal")
    assert {f: getattr(lean, f) for f in fields} == {f: getattr(reference, f) for f in fields}
    assert lean.retry_after == pytest.approx(reference.retry_after, abs=1.0)
    assert KEY not in (lean.error or "")
    # the same request: body, and every header but the openai client's retry count and read timeout
    assert len(server.seen) == 2
    (h1, b1), (h2, b2) = server.seen
    assert b1 == b2
    assert (b1["prompt"], b1["stop"], b1["logit_bias"], b1["n"]) == (
        ["first prompt", "second prompt"],
        ["\n20"],
        {"50256": -100},
        1,
    )

    def sent(h: dict) -> dict:
        # (HTTP/1.1 keeps the connection alive without the header httpx adds; the encodings are each library's)
        skip = {
            "x-stainless-retry-count",
            "x-stainless-read-timeout",
            "content-length",
            "accept-encoding",
            "connection",
        }
        return {k.lower(): v for k, v in h.items() if k.lower() not in skip}

    assert sent(h1) == sent(h2) and sent(h1)["authorization"] == f"Bearer {KEY}"
    # and what each scenario means (so the comparison is not of two equal mistakes)
    expected = {
        "ok": ("ok", False),
        "ok without usage": ("ok", True),
        "malformed": ("malformed", True),
        "wrong shape": ("malformed", True),
        "quota": ("quota", False),
        "rate limited": ("rate_limited", False),
        "rate limited, date": ("rate_limited", False),
        "401": ("auth", False),
        "403": ("auth", False),
        "404": ("not_found", False),
        "408": ("server_error", False),
        "409": ("server_error", False),
        "500": ("server_error", False),
        "503": ("server_error", False),
        "400": ("bad_request", False),
        "422": ("bad_request", False),
        "drop": ("connection", True),
        "hang": ("timeout", True),
    }[scenario]
    assert (lean.kind, lean.maybe_billed) == expected
    if scenario == "ok":
        assert [c["text"] for c in lean.choices] == ["answer 0", "answer 1"] and lean.usage == (7, 11)
    if scenario.startswith("rate limited"):
        assert lean.retry_after == pytest.approx(1.5 if scenario == "rate limited" else 3.0)


def test_a_refused_connection_was_never_sent_so_never_billed():
    got = asyncio.run(outcomes(f"http://127.0.0.1:{free_port()}/v1"))
    for outcome in got.values():
        assert (outcome.kind, outcome.maybe_billed, outcome.retryable) == ("connection", False, True)


def test_the_organization_from_the_environment_is_sent_as_the_openai_client_sends_it(monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-test")

    async def main():
        async with Server() as server:
            await outcomes(f"http://127.0.0.1:{server.port}/ok/v1")
        return server

    server = asyncio.run(main())
    assert [{k.lower(): v for k, v in h.items()}.get("openai-organization") for h, _ in server.seen] == [
        "org-test",
        "org-test",
    ]


def test_a_proxy_from_the_environment_is_used_as_the_openai_client_uses_it(monkeypatch):
    async def main(port):
        async with Server(port) as server:
            got = await outcomes("http://api.proxied.invalid/ok/v1")  # a host only the proxy can reach
        return server, got

    port = free_port()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server, got = asyncio.run(main(port))
    assert [o.kind for o in got.values()] == ["ok", "ok"]
    assert [h["Host"] for h, _ in server.seen] == ["api.proxied.invalid", "api.proxied.invalid"]
    monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{port}")  # no scheme: http://, as the openai client reads it
    server, got = asyncio.run(main(port))
    assert [o.kind for o in got.values()] == ["ok", "ok"] and len(server.seen) == 2
    monkeypatch.setenv("NO_PROXY", "proxied.invalid")  # bypassed: the host cannot be reached
    assert env_proxy("http://api.proxied.invalid/v1") is None


def test_a_socks_proxy_is_refused_before_any_request_without_its_password(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5://user:s3cret@127.0.0.1:1080")
    with pytest.raises(UserError) as e:
        ApiClient(api("https://api.example.invalid/v1", "aiohttp"), KEY)
    assert "socks5://" in str(e.value) and "api.http_backend=httpx" in str(e.value) and "s3cret" not in str(e.value)
    monkeypatch.setenv("NO_PROXY", "example.invalid")  # not this host's proxy: nothing to refuse
    asyncio.run(ApiClient(api("https://api.example.invalid/v1", "aiohttp"), KEY).close())


def test_a_redirect_stops_the_run_and_says_where_base_url_should_point(monkeypatch):
    """The openai client follows a redirect; the aiohttp path does not: a base_url that redirects redirects every
    request, and the answer was never billed, so the run stops at once with where the address points."""
    monkeypatch.setitem(SCRIPTS, "moved", (308, {"location": "https://api.example.invalid/v1/completions"}, ""))

    async def main():
        async with Server() as server:
            client = ApiClient(api(f"http://127.0.0.1:{server.port}/moved/v1", "aiohttp"), KEY)
            try:
                return await client.call(["p"], stop=[], logit_bias=None)
            finally:
                await client.close()

    got = asyncio.run(main())
    assert (got.kind, got.http, got.fatal, got.retryable, got.maybe_billed) == ("redirect", 308, True, False, False)
    assert "https://api.example.invalid/v1/completions" in got.error and "api.base_url" in got.error

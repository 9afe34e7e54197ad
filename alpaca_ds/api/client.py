"""One attempt at one request to an OpenAI-compatible API.

An online request is one aiohttp POST with the headers the official `openai` client sends (its default and auth
headers), its answer parsed here: the openai client's own request path (an httpx request built, then converted
for its aiohttp transport) costs 4-5x the CPU (benchmarks/bench_client.py), which the event loop pays for every
request in flight.
`api.http_backend: httpx` sends through the openai client itself instead; the Batch API always does. Either way
an HTTP status means the same outcome (`status_outcome`).

The client's own retries are off: calls.py retries (with backoff, jitter and Retry-After) so that every attempt
is reserved against the budget and logged before it is sent. An attempt never raises for an API or network
problem; it returns an `Outcome` that says whether it may have been billed, whether to retry, and whether the
whole run should stop (a rejected key, an unknown model, no quota).

The API key lives only in the client object: error texts are scrubbed of it, and nothing here logs a request
(whose headers carry it). `api_key` reads it from the environment.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from alpaca_ds.api.config import ApiConfig, EndpointConfig
from alpaca_ds.common.errors import UserError

# what openai's completions.create and chat.completions.create pass with each request: the bearer key only
_REQUEST_OPTIONS = {"security": {"bearer_auth": True}}


def api_key(api: ApiConfig | EndpointConfig) -> str | None:
    """The key from the environment variable `api.api_key_env` names (None: a local server that needs none)."""
    if not api.api_key_env:
        return None
    key = os.environ.get(api.api_key_env, "").strip()
    if not key:
        raise UserError(
            f"the API key is read from the environment variable {api.api_key_env} (api.api_key_env), "
            "which is not set: export it, or name another variable with --set api.api_key_env=NAME "
            "(null for a local server that needs no key)"
        )
    return key


@dataclass
class Outcome:
    kind: str  # ok | rate_limited | server_error | timeout | connection | malformed
    # | bad_request | auth | not_found | quota | redirect
    http: int | None = None
    choices: list[dict] | None = None  # [{"prompt": p, "text": str, "finish_reason": str|None}]
    usage: tuple[int, int] | None = None  # (prompt_tokens, completion_tokens) as the API reported them
    maybe_billed: bool = False  # no usage, but the API may have done (and billed) the work
    retry_after: float | None = None
    retryable: bool = False
    fatal: bool = False  # no later request can succeed: stop the run
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class ApiClient:
    """Requests to the API of one config (a teacher, a judge or a model's endpoint), with the async openai client
    beside for the Batch API (`openai`)."""

    def __init__(self, api: ApiConfig, key: str | None):
        from openai import AsyncOpenAI

        self.api = api
        self._secret = key
        self.backend = api.http_backend
        kwargs = {}
        if self.backend == "aiohttp":
            # the Batch API's files and batches go through the openai package's own aiohttp transport
            try:
                from openai import DefaultAioHttpClient

                kwargs["http_client"] = DefaultAioHttpClient(timeout=api.timeout_s)
            except (ImportError, RuntimeError):  # an openai release without it
                pass
        self._client = AsyncOpenAI(
            base_url=api.base_url, api_key=key or "no-key", max_retries=0, timeout=api.timeout_s, **kwargs
        )
        # what the openai client sends with each request: its default headers (those it leaves out are Omit
        # objects) and the bearer key; in memory only
        self._headers = {k: v for k, v in self._client.default_headers.items() if isinstance(v, str)}
        self._headers.update(self._client.auth_headers)
        self._base = str(self._client.base_url).rstrip("/")
        self._session = None  # the aiohttp session of online requests, opened on the first (in the running loop)
        # the proxy the environment names for base_url, looked up once: aiohttp's trust_env would look it up (and
        # ~/.netrc) again for every request, 0.5-0.7 ms of CPU each
        self._proxy = env_proxy(self._base) if self.backend == "aiohttp" else None
        if self._proxy and (scheme := urlsplit(self._proxy).scheme) not in ("http", "https"):
            raise UserError(  # (the proxy's address is not repeated: it may hold a password)
                f"the environment names a {scheme}:// proxy for {self._base} (HTTP_PROXY, HTTPS_PROXY or "
                "ALL_PROXY), and api.http_backend aiohttp sends through http:// and https:// proxies only: name "
                "one of those, or --set api.http_backend=httpx (which needs `pip install socksio` for SOCKS)"
            )

    def scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return text[:500]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._client.close()

    @property
    def openai(self):
        """The underlying AsyncOpenAI client (the Batch API's files and batches)."""
        return self._client

    def request(
        self, prompts: list[str], stop: list[str] | None, logit_bias: dict[str, int] | None
    ) -> tuple[str, dict]:
        """(endpoint, body) of one request: what is sent online, and what a batch input line holds."""
        api = self.api
        body = dict(
            model=api.model, max_tokens=api.max_tokens, temperature=api.temperature, top_p=api.top_p, n=api.n, stop=stop
        )
        if logit_bias:
            body["logit_bias"] = logit_bias
        if api.mode == "completions":
            if api.logprobs is not None:
                body["logprobs"] = api.logprobs
            return "/v1/completions", {**body, "prompt": prompts}
        assert len(prompts) == 1
        if api.logprobs is not None:
            body.update(logprobs=True, top_logprobs=api.logprobs)
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompts[0]}]}

    async def call(self, prompts: list[str], *, stop: list[str], logit_bias: dict[str, int] | None) -> Outcome:
        url, body = self.request(prompts, stop, logit_bias)
        if self.backend == "aiohttp":
            return await self._post(url.removeprefix("/v1"), body, len(prompts))
        api = self.api
        try:
            # the openai client's documented way to post a body as it is and get the answer's text (its `post`, as
            # for an undocumented endpoint): the same request, headers, auth and errors as `completions.create`,
            # without its pass over the parameters' types or a response model (the body is parsed here, once)
            call = self._client.post(url.removeprefix("/v1"), cast_to=str, body=body, options=_REQUEST_OPTIONS)
            # a hard cap beside the client's own timeout, in case a server trickles bytes forever
            text = await asyncio.wait_for(call, api.timeout_s + 5)
        except asyncio.TimeoutError:
            return Outcome("timeout", maybe_billed=True, retryable=True, error=f"no answer within {api.timeout_s:g} s")
        except Exception as e:  # noqa: BLE001 - every failure becomes a recorded outcome
            return self._classify(e)
        return self.parse(text, len(prompts))

    async def _post(self, path: str, body: dict, num_prompts: int) -> Outcome:
        """One POST through aiohttp: what the openai client would send, its failures read as it reads them
        (a connection refused was never sent; a timeout or a connection lost mid-answer may have been billed)."""
        import aiohttp

        t = self.api.timeout_s
        if self._session is None:
            # the openai client's timeout is per phase (connect, read); the total, a cap in case a server
            # trickles bytes forever
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),  # the caller's concurrency is the limit
                timeout=aiohttp.ClientTimeout(total=t + 5, sock_connect=t, sock_read=t),
            )
        try:
            async with self._session.post(
                self._base + path,
                data=orjson.dumps(body),
                headers=self._headers,
                allow_redirects=False,
                proxy=self._proxy,
            ) as r:
                status, headers = r.status, r.headers
                text = (await r.read()).decode("utf-8", errors="replace")
        except asyncio.TimeoutError:
            return Outcome("timeout", maybe_billed=True, retryable=True, error=f"no answer within {t:g} s")
        except aiohttp.ClientConnectorError as e:  # refused before anything was sent: it cannot have been billed
            return Outcome("connection", retryable=True, error=self.scrub(f"{type(e).__name__}: {e}"))
        except (aiohttp.ClientError, OSError) as e:  # lost mid-answer: the API may have done the work
            return Outcome(
                "connection", maybe_billed=True, retryable=True, error=self.scrub(f"{type(e).__name__}: {e}")
            )
        if 200 <= status < 300:
            return self.parse(text, num_prompts)
        try:
            error = json.loads(text)
        except ValueError:
            error = text
        if isinstance(error, dict):  # the openai client's reading: the body's "error" object, if it has one
            error = error.get("error", error)
        message = error.get("message") if isinstance(error, dict) else None
        detail = message if isinstance(message, str) and message else text.strip()[:300]
        if 300 <= status < 400:
            where = headers.get("location", "an address it does not give")
            detail = f"{self._base} redirects to {where}; set api.base_url to the address it points to"
        return self.status_outcome(status, headers, error, self.scrub(f"HTTP {status}: {detail}"))

    def parse(self, body: str, num_prompts: int) -> Outcome:
        """The outcome of a 200 answer's body (online, or a batch output line's response body)."""
        try:
            data = json.loads(body)
            usage = data.get("usage")
            usage = (int(usage["prompt_tokens"]), int(usage["completion_tokens"])) if isinstance(usage, dict) else None
        except (ValueError, KeyError, TypeError, AttributeError):
            return Outcome(
                "malformed",
                http=200,
                maybe_billed=True,
                retryable=True,
                error=self.scrub(f"response is not valid JSON: {body[:200]!r}"),
            )
        try:
            choices = []
            for c in data["choices"]:
                index = int(c.get("index", 0))
                text = c["text"] if self.api.mode == "completions" else c["message"]["content"]
                if not isinstance(text, str):
                    raise TypeError("text is not a string")
                choice = {
                    "prompt": index // self.api.n,
                    "index": index,
                    "text": text,
                    "finish_reason": c.get("finish_reason"),
                }
                if self.api.logprobs is not None:
                    choice["top_logprobs"] = top_logprobs(c.get("logprobs"), self.api.mode)
                choices.append(choice)
            choices.sort(key=lambda c: c["index"])
            if not choices or choices[-1]["prompt"] >= num_prompts:
                raise ValueError("choices do not match the prompts sent")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return Outcome(
                "malformed",
                http=200,
                usage=usage,
                maybe_billed=usage is None,
                retryable=True,
                error=self.scrub(f"unexpected response shape ({e}): {body[:200]!r}"),
            )
        return Outcome("ok", http=200, choices=choices, usage=usage, maybe_billed=usage is None)

    @staticmethod
    def status_outcome(status: int, headers, error, message: str) -> Outcome:
        """The outcome of an answer with HTTP status `status` (not 2xx); `error`: the body's "error" object (or
        the body), as the API sent it."""
        retry_after = _retry_after(headers)
        code = error.get("code") if isinstance(error, dict) else None
        if status == 429 and code == "insufficient_quota":
            return Outcome("quota", http=status, fatal=True, error=message)
        if status == 429:
            return Outcome("rate_limited", http=status, retry_after=retry_after, retryable=True, error=message)
        if status in (401, 403):
            return Outcome("auth", http=status, fatal=True, error=message)
        if status == 404:
            return Outcome("not_found", http=status, fatal=True, error=message)
        if 300 <= status < 400:  # the same for every request: the openai client follows it, this path does not
            return Outcome("redirect", http=status, fatal=True, error=message)
        if status in (408, 409) or status >= 500:
            return Outcome("server_error", http=status, retry_after=retry_after, retryable=True, error=message)
        return Outcome("bad_request", http=status, error=message)

    def _classify(self, e: Exception) -> Outcome:
        import openai

        message = self.scrub(f"{type(e).__name__}: {e}")
        if isinstance(e, openai.APIConnectionError) and _never_connected(e):
            # refused before anything was sent: it cannot have been billed
            return Outcome("connection", retryable=True, error=message)
        if isinstance(e, openai.APITimeoutError):
            return Outcome("timeout", maybe_billed=True, retryable=True, error=message)
        if isinstance(e, openai.APIConnectionError):  # lost mid-answer: the API may have done the work
            return Outcome("connection", maybe_billed=True, retryable=True, error=message)
        if isinstance(e, openai.APIStatusError):
            return self.status_outcome(e.status_code, e.response.headers, e.body, message)
        # the client could not make sense of what came back
        return Outcome("malformed", maybe_billed=True, retryable=True, error=message)


def top_logprobs(logprobs, mode: str) -> list[dict[str, float]] | None:
    """The top log-probabilities of each generated token, {token: logprob} per position, from a choice's
    `logprobs` (chat: {"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}; completions:
    {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}]}). None when the API gave none, or gave them
    in a shape not understood: asking again would not change that, and the caller falls back on the text."""
    try:
        if mode == "chat":
            return [{t["token"]: float(t["logprob"]) for t in pos["top_logprobs"]} for pos in logprobs["content"]]
        return [{str(k): float(v) for k, v in pos.items()} for pos in logprobs["top_logprobs"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY; NO_PROXY), as the openai
    client's httpx takes it (http:// when it names no scheme); None for none."""
    import urllib.request

    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    return proxy if not proxy or "://" in proxy else f"http://{proxy}"


def _never_connected(e: BaseException) -> bool:
    """Whether the exception chain says no connection was made (so the request never reached the API)."""
    seen = 0
    while e is not None and seen < 10:
        # httpx's (http_backend: httpx, the only path through the openai client that reaches here) and the OS's
        if type(e).__name__ in ("ConnectError", "ConnectionRefusedError"):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _retry_after(headers) -> float | None:
    """Seconds asked for by retry-after-ms / retry-after (a number or an HTTP date), as the openai client reads them."""
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None

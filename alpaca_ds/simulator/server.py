"""The SIMULATOR: one OpenAI-compatible fake server for tests, benchmarks and the offline quickstart.

    alpaca-ds teacher serve --port 8765 --latency 0.2 --fail-429 0.05 --fail-500 0.05

/v1/completions and /v1/chat/completions answer as a teacher (teacher.py) or, for a judge prompt, as a judge
(judge.py); /v1/models lists one model; /v1/files and /v1/batches are the Batch API (batch.py), unless
`batch_api` is off. It honours stop sequences and max_tokens (finish_reason "length" when cut), reports usage
counted with tiktoken, and bills it: online at the model's price, batch lines at the batch price (the price table
of alpaca_ds/api, or the price given), so a test can compare what a client spent with what it was billed.

Faults, drawn per request from the seed, the request body and how many times that body was seen before (so a
retry of the same request draws again): 429 with Retry-After, 500, a hang past the client's timeout, an answer
cut at a random length with finish_reason "length", and a malformed body (a 200 whose JSON is cut short).
`fail_first` answers 429 (Retry-After 0) to the first attempts of every distinct request; `fail_matching`
answers 500, always, to prompts that match a regular expression (online, and as failed lines in a batch).
`require_key` answers 401 to any other bearer token. GET /sim/stats reports requests by outcome and the bill.

Log-probabilities (logprobs.py) when a request asks for them (chat: logprobs + top_logprobs; completions:
logprobs), unless `logprobs` is off (an endpoint without them); what was returned is kept per prompt in
`logprobs_returned`. /v1/moderations flags texts holding one of `moderation_words` (moderation.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass

from alpaca_ds.api.tokens import token_counter
from alpaca_ds.simulator import logprobs as lp
from alpaca_ds.simulator.judge import judge_reply
from alpaca_ds.simulator.moderation import Moderation
from alpaca_ds.simulator.teacher import DEFAULT_MODEL, TeacherSim


@dataclass(frozen=True)
class Faults:
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_truncate: float = 0.0
    rate_malformed: float = 0.0
    retry_after: float = 1.0
    hang_s: float = 600.0
    fail_first: int = 0  # 429s to the first attempts of each distinct request
    fail_matching: str | None = None  # a regex: matching prompts always fail (500)

    def total(self) -> float:
        return self.rate_429 + self.rate_500 + self.rate_timeout + self.rate_truncate + self.rate_malformed


class HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str, code: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.kind, self.code, self.headers = status, kind, code, headers

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": None, "code": self.code}}


class Simulator:
    def __init__(
        self,
        content: TeacherSim,
        latency: float = 0.0,
        jitter: float = 0.0,
        faults: Faults = Faults(),
        require_key: str | None = None,
        price=None,
        batch=None,
        logprobs: bool = True,
        moderation_words: tuple[str, ...] = (),
    ):
        if faults.total() > 1:
            raise ValueError("fault rates add up to more than 1")
        self.content = content
        self.latency = latency
        self.jitter = jitter
        self.faults = faults
        self.require_key = require_key
        self._fail = re.compile(faults.fail_matching) if faults.fail_matching else None
        self._price = price  # an api.prices.Price; None: the table's price of the model asked for
        self._prices: dict = {}  # model -> its price (the table is read once)
        self.batch = batch  # batch.BatchApi, or None: no /v1/files, /v1/batches
        self.seen: Counter = Counter()  # request body digest -> attempts
        self.counts: Counter = Counter()  # outcome -> requests
        self.answered: Counter = Counter()  # prompt digest -> answers given (online and batch)
        self.keys: set[str] = set()  # Authorization headers seen (in memory only, for tests)
        self.billed = {"online": [0.0, 0], "batch": [0.0, 0]}  # transport -> [usd, tokens]
        self.logprobs = logprobs
        self.logprobs_returned: dict[str, dict] = {}  # prompt -> the logprobs object of its last answer
        self.moderation = Moderation(moderation_words)

    # ---- answering one request body (online, or a batch line) ------------------------------------------------

    def price(self, model: str, batch: bool):
        """What a request for `model` is billed at: the price given, else the table's (an unknown model: 0)."""
        from alpaca_ds.api.prices import Price, load_table

        if model not in self._prices:
            e = load_table(None).get(model) if self._price is None else None
            self._prices[model] = self._price or (
                Price(e["prompt"], e["completion"], "table", e.get("batch_prompt"), e.get("batch_completion"))
                if e
                else Price(0.0, 0.0, "unpriced model")
            )
        p = self._prices[model]
        return p.batch() if batch else p

    @staticmethod
    def prompts_of(body: dict, chat: bool) -> list[str]:
        if chat:
            return ["\n".join(str(m.get("content", "")) for m in body["messages"])]
        prompts = body["prompt"]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a list of strings")
        return prompts

    def fault(self, raw: bytes, prompts: list[str]) -> tuple[str | None, random.Random]:
        """The fault this attempt draws (None: answer it), and the RNG of its details."""
        digest = hashlib.sha256(raw).hexdigest()
        seen = self.seen[digest]
        self.seen[digest] += 1
        frng = random.Random(f"faults/{self.content.seed}/{digest}/{seen}")
        f = self.faults
        if self._fail is not None and any(self._fail.search(p) for p in prompts):
            return "500", frng
        if seen < f.fail_first:
            return "429", frng
        draw = frng.random()
        for name, rate in (
            ("429", f.rate_429),
            ("500", f.rate_500),
            ("timeout", f.rate_timeout),
            ("truncate", f.rate_truncate),
            ("malformed", f.rate_malformed),
        ):
            if draw < rate:
                return name, frng
            draw -= rate
        return None, frng

    def complete(self, body: dict, chat: bool, batch: bool = False, frng=None, truncate: bool = False) -> dict:
        """The response body to a request body (already checked), billed."""
        model = body["model"]
        max_tokens = int(body.get("max_tokens") or 16)
        n = int(body.get("n") or 1)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        prompts = self.prompts_of(body, chat)
        enc = self.content._enc(model)
        choices, completion_tokens = [], 0
        for p, prompt in enumerate(prompts):
            for j in range(n):
                index = p * n + j
                cut = frng.randint(1, max(1, max_tokens - 1)) if truncate else None
                text, reason, used = self.content.finish(
                    model, self.content.answer(model, prompt, j, chat), stop, max_tokens, cut
                )
                completion_tokens += used
                logprobs = self._logprobs(body, chat, prompt, text, enc)
                if chat:
                    choices.append(
                        {
                            "index": index,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": reason,
                            "logprobs": logprobs,
                        }
                    )
                else:
                    choices.append({"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs})
            self.answered[hashlib.sha256(prompt.encode()).hexdigest()] += 1
        count = token_counter(enc).count
        prompt_tokens = sum(count(p) for p in prompts)
        if chat:
            prompt_tokens += 7  # the chat format's own tokens around one message
        bill = self.billed["batch" if batch else "online"]
        bill[0] += self.price(model, batch).cost(prompt_tokens, completion_tokens)
        bill[1] += prompt_tokens + completion_tokens
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return {
            "id": f"sim-{digest[:24]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _logprobs(self, body: dict, chat: bool, prompt: str, text: str, enc) -> dict | None:
        """A choice's log-probabilities, when asked for and not switched off (kept per prompt for tests)."""
        top = lp.asked(body, chat)
        if top is None or not self.logprobs:
            return None
        reply = judge_reply(prompt, self.content.vocab)
        self.logprobs_returned[prompt] = lp.logprobs(enc, text, reply[1] if reply else None, top, chat, len(prompt))
        return self.logprobs_returned[prompt]

    # ---- HTTP -------------------------------------------------------------------------------------------------

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/moderations", self._moderations)
        app.router.add_get("/sim/stats", self._stats)  # the simulator's own: requests by outcome, the bill
        if self.batch is not None:
            self.batch.routes(app, self)
        return app

    def check_key(self, request) -> None:
        auth = request.headers.get("Authorization", "")
        self.keys.add(auth)
        if self.require_key is not None and auth != f"Bearer {self.require_key}":
            self.counts["401"] += 1
            raise HttpError(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")

    def stats(self) -> dict:
        out = {
            "requests": sum(self.counts.values()),
            "by_outcome": dict(self.counts),
            "billed_usd": {k: v[0] for k, v in self.billed.items()},
            "billed_tokens": {k: v[1] for k, v in self.billed.items()},
        }
        if self.batch is not None:
            out["batches"] = self.batch.stats()
        return out

    async def _stats(self, request):
        from aiohttp import web

        return web.json_response(self.stats())

    async def _models(self, request):
        from aiohttp import web

        return web.json_response(
            {
                "object": "list",
                "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "alpaca-ds-simulator"}],
            }
        )

    async def _moderations(self, request):
        from aiohttp import web

        try:
            self.check_key(request)
            try:
                answer = self.moderation.answer(json.loads(await request.read()))
            except (ValueError, TypeError, KeyError) as e:
                self.counts["400"] += 1
                raise HttpError(400, f"invalid request: {e}", "invalid_request_error") from None
        except HttpError as e:
            return web.json_response(e.body(), status=e.status)
        self.counts["moderation"] += 1
        return web.json_response(answer)

    async def _completions(self, request):
        return await self._serve(request, chat=False)

    async def _chat(self, request):
        return await self._serve(request, chat=True)

    async def _serve(self, request, chat: bool):
        from aiohttp import web

        raw = await request.read()
        arrived = time.monotonic()
        try:
            self.check_key(request)
            try:
                body = json.loads(raw)
                body["model"]
                prompts = self.prompts_of(body, chat)
            except (ValueError, KeyError, TypeError) as e:
                self.counts["400"] += 1
                raise HttpError(400, f"invalid request: {e}", "invalid_request_error") from None
        except HttpError as e:
            return web.json_response(e.body(), status=e.status, headers=e.headers)
        fault, frng = self.fault(raw, prompts)
        self.counts[fault or "ok"] += 1
        f = self.faults
        delay = self.latency + (frng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
        if fault == "429":
            e = HttpError(
                429,
                "Rate limit reached (simulated).",
                "requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": f"{f.retry_after:g}"},
            )
            return web.json_response(e.body(), status=429, headers=e.headers)
        if fault in ("500", "timeout"):
            await asyncio.sleep(max(0.0, delay))
            if fault == "timeout":
                await asyncio.sleep(f.hang_s)
                return web.json_response(
                    HttpError(504, "Gateway timeout (simulated hang).", "server_error").body(), status=504
                )
            return web.json_response(
                HttpError(500, "The server had an error (simulated).", "server_error").body(), status=500
            )
        text = json.dumps(self.complete(body, chat, frng=frng, truncate=fault == "truncate"))
        if fault == "malformed":
            text = text[: frng.randint(1, max(1, len(text) // 2))]
        # the answer is computed first and the latency counts from the request's arrival, so a burst of
        # requests is not also delayed by the simulator working through them one after another
        await asyncio.sleep(max(0.0, delay - (time.monotonic() - arrived)))
        return web.Response(text=text, content_type="application/json")

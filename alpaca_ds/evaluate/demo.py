"""A web demo that gathers feedback, as Alpaca's did: ask the model, read the answer as it streams, rate it.

    alpaca-ds demo --model runs/tiny/final                          # or an endpoint: --model http://HOST:8000/v1
    alpaca-ds demo --model runs/tiny/final --set filter.words=blocklist.txt
    alpaca-ds demo summary demo/feedback.jsonl

Serves http://HOST:PORT/?t=TOKEN (printed; the token keeps other pages open in the browser from posting). The
page takes an instruction and an optional input, wraps them in Alpaca's template and streams the answer with
the decoding settings chosen on it (temperature, top_p, max_new_tokens up to max_new_tokens_cap). Each answer
gets thumbs up / down and a comment, appended to the feedback file (feedback.py) before the page says "saved";
a reload shows this browser's recent answers with their ratings. The content filter (content_filter.py)
refuses prompts and withholds answers. Bind to 127.0.0.1 (the default) unless you mean to share the demo.

HTTP API (the X-Token header carries the token; errors are {"error": message} with a 4xx status):
  GET  /api/info                  model name, decoding defaults, the cap, whether a filter is on
  GET  /api/history?client=ID     this browser's recent answers
  POST /api/generate {instruction, input?, temperature?, top_p?, max_new_tokens?, seed?, client?}
       -> NDJSON: {"type": "start", "id"}, {"type": "text", "text"}..., {"type": "done", "finish_reason"};
          or {"type": "refused" | "withheld" | "error", "message"}
  POST /api/feedback {id, rating?: "up" | "down" | null, comment?: str} -> the saved rating and comment
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from importlib import resources

from pydantic import ValidationError

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.serving import serve_until_interrupted
from alpaca_ds.dataset.template import format_prompt
from alpaca_ds.evaluate.config import DecodingConfig, DemoConfig
from alpaca_ds.evaluate.content_filter import ContentFilter
from alpaca_ds.evaluate.feedback import RATINGS, FeedbackLog
from alpaca_ds.evaluate.local import Answer, LocalModel, model_name
from alpaca_ds.evaluate.serve import BadRequest, json_object

MAX_TEXT = 20_000  # characters of an instruction + input, or of a comment
REFUSAL = "Sorry, this demo does not answer that request: it did not pass the content filter."
WITHHELD = "The answer was withheld: it did not pass the content filter."


class EndpointModel:
    """A model behind an OpenAI-compatible /completions endpoint, streamed like LocalModel.astream."""

    def __init__(self, base_url: str, key: str | None, name: str | None):
        self.base_url, self.key, self.name = base_url.rstrip("/"), key, name
        self.client = None

    async def start(self) -> None:
        import openai

        self.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.key or "none", timeout=600, max_retries=2)
        if self.name is None:
            try:
                self.name = (await self.client.models.list()).data[0].id
            except (openai.OpenAIError, IndexError) as e:
                raise UserError(
                    f"model {self.base_url}: cannot list its models ({type(e).__name__}: {e}); is it "
                    "an OpenAI-compatible endpoint ending in /v1? Or set name=..."
                ) from None

    async def astream(
        self, prompt: str, decoding: DecodingConfig, max_new_tokens: int, seed: int | None = None
    ) -> AsyncIterator[str | Answer]:
        stream = await self.client.completions.create(
            model=self.name,
            prompt=prompt,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            max_tokens=max_new_tokens,
            seed=seed,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, reason, usage = "", "stop", None
        async with stream:  # closes the response when the consumer stops early (an answer withheld)
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.text:
                        text += choice.text
                        yield choice.text
                    reason = choice.finish_reason or reason
                usage = chunk.usage or usage
        yield Answer(text, reason, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


def _text(body: dict, key: str, required: bool = False) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be text")
    if required and not value.strip():
        raise BadRequest(f"{key} is empty")
    if len(value) > MAX_TEXT:
        raise BadRequest(f"{key} is longer than {MAX_TEXT} characters")
    return value


class Demo:
    def __init__(self, cfg: DemoConfig, model, name: str | None, log: FeedbackLog, content_filter: ContentFilter):
        self.cfg, self.model, self.log, self.filter = cfg, model, log, content_filter
        self._name = name  # None for an endpoint until its /models answers
        self.token = secrets.token_urlsafe(16)

    @property
    def name(self) -> str:
        return self._name or self.model.name

    # ---- requests ---------------------------------------------------------------------------------------------

    def _authorised(self, request) -> None:
        if not secrets.compare_digest(request.headers.get("X-Token", ""), self.token):
            raise BadRequest("missing or wrong token; open the URL the demo printed", status=403)

    async def _body(self, request) -> dict:
        self._authorised(request)
        return await json_object(request)

    def _decoding(self, body: dict) -> tuple[DecodingConfig, int | None]:
        """The request's decoding, and its seed: reproducible sampling when given, a fresh draw when None."""
        d = self.cfg.decoding
        values = {
            k: body.get(k) if body.get(k) is not None else getattr(d, k)
            for k in ("temperature", "top_p", "max_new_tokens")
        }
        seed = body.get("seed")
        if any(isinstance(v, (bool, str)) for v in (*values.values(), seed)):
            raise BadRequest("temperature, top_p, max_new_tokens and seed must be numbers")
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**32):
            raise BadRequest("seed must be a whole number in [0, 2^32)")
        try:
            decoding = DecodingConfig(**values, seed=d.seed if seed is None else seed)
        except ValidationError as e:
            raise BadRequest("; ".join(f"{err['loc'][0]}: {err['msg']}" for err in e.errors())) from None
        if decoding.max_new_tokens > self.cfg.max_new_tokens_cap:
            raise BadRequest(f"max_new_tokens: at most {self.cfg.max_new_tokens_cap} (the demo's max_new_tokens_cap)")
        return decoding, seed

    # ---- handlers ---------------------------------------------------------------------------------------------

    async def info(self, request):
        from aiohttp import web

        self._authorised(request)
        return web.json_response(
            {
                "model": self.name,
                "decoding": self.cfg.decoding.model_dump(),
                "max_new_tokens_cap": self.cfg.max_new_tokens_cap,
                "filter": self.filter.active,
            }
        )

    async def history(self, request):
        from aiohttp import web

        self._authorised(request)
        answers = [
            {
                "id": r["id"],
                "instruction": r.get("instruction"),
                "input": r.get("input"),
                "answer": None if r.get("withheld") else r["answer"],
                "withheld": bool(r.get("withheld")),
                "rating": r.get("rating"),
                "comment": r.get("comment"),
            }
            for r in self.log.history(request.query.get("client", ""))
        ]
        return web.json_response({"answers": answers})

    async def feedback(self, request):
        from aiohttp import web

        body = await self._body(request)
        record = self.log.records.get(body.get("id")) if isinstance(body.get("id"), str) else None
        if record is None or record.get("answer") is None:
            raise BadRequest(f"no answer with id {body.get('id')!r}", status=404)
        update = {}
        if "rating" in body:
            if body["rating"] not in (*RATINGS, None):
                raise BadRequest('rating must be "up", "down" or null')
            update["rating"] = body["rating"]
        if "comment" in body:
            update["comment"] = _text(body, "comment").strip()
        if not update:
            raise BadRequest("nothing to save: send a rating and/or a comment")
        saved = await self.log.save({**record, **update})
        return web.json_response({"id": saved["id"], "rating": saved["rating"], "comment": saved["comment"]})

    async def generate(self, request):
        from aiohttp import web

        body = await self._body(request)
        instruction, input_ = _text(body, "instruction", required=True), _text(body, "input")
        client = body.get("client") if isinstance(body.get("client"), str) else ""
        decoding, seed = self._decoding(body)
        prompt = format_prompt(instruction, input_)
        record = {
            "id": uuid.uuid4().hex,
            "client": client[:64],
            "model": self.name,
            "instruction": instruction,
            "input": input_,
            "prompt": prompt,
            "answer": None,
            "decoding": decoding.model_dump(exclude=set() if seed is not None else {"seed"}),
            "rating": None,
            "comment": "",
        }
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
        await response.prepare(request)

        async def send(**event):
            await response.write((json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8"))

        try:
            refused = await self.filter.check(instruction + "\n\n" + input_)
            if refused:
                await self.log.save({**record, "refused": refused})
                await send(type="refused", message=REFUSAL)
                return response
            await send(type="start", id=record["id"])
            text, final, withheld = "", None, None
            async with contextlib.aclosing(
                self.model.astream(prompt, decoding, decoding.max_new_tokens, seed=seed)
            ) as pieces:
                async for piece in pieces:
                    if isinstance(piece, Answer):
                        final = piece
                        continue
                    # checked before the piece is sent, so a listed word never reaches the page
                    withheld = self.filter.listed(text + piece)
                    if withheld:
                        break
                    text += piece
                    await send(type="text", text=piece)
            text = final.text if final else text  # cut short by the word list: what was checked so far
            finish = final.finish_reason if final else None
            withheld = withheld or await self.filter.check(text)
            await self.log.save({**record, "answer": text, "withheld": withheld, "finish_reason": finish})
            if withheld:
                await send(type="withheld", id=record["id"], message=WITHHELD)
            else:
                await send(type="done", id=record["id"], finish_reason=finish)
        except ConnectionError:  # the tab was closed mid-answer: nobody to tell
            pass
        except Exception as e:  # noqa: BLE001 - the model or endpoint failed: the page says so, the server goes on
            print(f"demo: generation failed: {type(e).__name__}: {e}", file=sys.stderr)
            try:
                await send(type="error", message=f"generation failed ({type(e).__name__}: {str(e)[:300]})")
            except ConnectionError:
                pass
        return response

    async def index(self, request):
        from aiohttp import web

        page = (resources.files("alpaca_ds.evaluate") / "static" / "demo.html").read_bytes()
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-store"})

    def app(self):
        from aiohttp import web

        @web.middleware
        async def errors(request, handler):
            try:
                return await handler(request)
            except BadRequest as e:
                return web.json_response({"error": str(e)}, status=e.status)

        async def start(app):
            if isinstance(self.model, EndpointModel):
                await self.model.start()

        async def stop(app):
            await self.filter.close()
            if isinstance(self.model, EndpointModel):
                await self.model.close()

        app = web.Application(client_max_size=1024 * 1024, middlewares=[errors])
        app.on_startup.append(start)
        app.on_cleanup.append(stop)
        app.router.add_get("/", self.index)
        app.router.add_get("/api/info", self.info)
        app.router.add_get("/api/history", self.history)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_post("/api/feedback", self.feedback)
        return app


def serve(cfg: DemoConfig, announce=print) -> None:
    """Load the model (or reach the endpoint), then serve the page until interrupted; announces
    'demo of NAME: http://HOST:PORT/?t=TOKEN'."""
    content_filter = ContentFilter(cfg.filter)
    if cfg.model.startswith(("http://", "https://")):
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and not key:
            raise UserError(f"api_key_env: the environment variable {cfg.api_key_env} is not set")
        model, name = EndpointModel(cfg.model, key, cfg.name), cfg.name
    else:
        model, name = LocalModel(cfg.model, cfg.dtype, cfg.device), cfg.name or model_name(cfg.model)
    log = FeedbackLog(cfg.feedback)
    demo = Demo(cfg, model, name, log, content_filter)
    note = "" if cfg.host in ("127.0.0.1", "localhost", "::1") else " (reachable from the network)"
    try:
        serve_until_interrupted(
            demo.app(),
            cfg.host,
            cfg.port,
            lambda port: announce(
                f"demo of {demo.name}: http://{cfg.host}:{port}/?t={demo.token}{note}  (feedback to {cfg.feedback}; "
                "Ctrl-C to stop)"
            ),
        )
    finally:
        log.close()

"""An OpenAI-compatible server for a fine-tuned model: /v1/completions, /v1/chat/completions (both streaming),
/v1/models.

    alpaca-ds serve --model runs/tiny/final --port 8000
    # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").chat.completions.create(...)
    #       alpaca-ds evaluate answer --model http://127.0.0.1:8000/v1 --eval-set selfinstruct

/v1/completions generates from the prompt as given (send Alpaca's template, as `evaluate answer` does);
/v1/chat/completions wraps the last user message in Alpaca's template (Alpaca was trained on single turns, so
earlier turns and system messages are not shown to the model). Requests without temperature / top_p /
max_tokens get the config's `decoding` values; `stop`, `n`, `seed` and `stream` (with
`stream_options.include_usage`) work as in OpenAI's API. One request generates at a time (a list of prompts is one
batch); the others wait their turn. Bind to 127.0.0.1 (the default) unless you mean to share the model: the
server has no authentication.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from alpaca_ds.common.serving import serve_until_interrupted
from alpaca_ds.dataset.template import format_prompt
from alpaca_ds.evaluate.config import DecodingConfig, ServeConfig
from alpaca_ds.evaluate.local import Answer, LocalModel, model_name


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


async def json_object(request) -> dict:
    """A request's JSON object body, or a BadRequest saying what is wrong with it."""
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def chat_prompt(messages) -> str:
    """Alpaca's prompt for a chat request: the last user message is the instruction."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", param="messages")
    for m in reversed(messages):
        if not isinstance(m, dict):
            raise BadRequest("each message must be an object with role and content", param="messages")
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            if not isinstance(content, str):
                raise BadRequest("the user message's content must be text", param="messages")
            return format_prompt(content)
    raise BadRequest("messages hold no user message", param="messages")


class Server:
    def __init__(self, model: LocalModel, name: str, decoding: DecodingConfig, max_new_tokens_cap: int):
        self.model = model
        self.name = name
        self.decoding = decoding
        self.cap = max_new_tokens_cap
        self.created = int(time.time())

    # ---- request parsing ----------------------------------------------------------------------------------------

    def _params(self, body: dict) -> tuple[DecodingConfig, int, list[str], int, int | None]:
        if body.get("model") not in (None, self.name):
            raise BadRequest(
                f"The model `{body.get('model')}` does not exist; this server serves `{self.name}`.",
                status=404,
                code="model_not_found",
                param="model",
            )
        for key in ("echo", "best_of", "logprobs", "suffix", "tools", "functions"):
            if body.get(key) not in (None, False, 1 if key == "best_of" else None):
                raise BadRequest(f"{key} is not supported by alpaca-ds serve", param=key)
        try:
            temperature = (
                float(body["temperature"]) if body.get("temperature") is not None else self.decoding.temperature
            )
            top_p = float(body["top_p"]) if body.get("top_p") is not None else self.decoding.top_p
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            max_tokens = int(max_tokens) if max_tokens is not None else self.decoding.max_new_tokens
            n = int(body.get("n") or 1)
            seed = int(body["seed"]) if body.get("seed") is not None else None
        except (TypeError, ValueError) as e:
            raise BadRequest(f"invalid number: {e}") from None
        if not 0 <= temperature <= 2:
            raise BadRequest("temperature must be in [0, 2]", param="temperature")
        if not 0 < top_p <= 1:
            raise BadRequest("top_p must be in (0, 1]", param="top_p")
        if not 1 <= max_tokens <= self.cap:
            raise BadRequest(
                f"max_tokens must be in [1, {self.cap}] (the server's max_new_tokens_cap)", param="max_tokens"
            )
        if not 1 <= n <= 16:
            raise BadRequest("n must be in [1, 16]", param="n")
        stop = body.get("stop")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise BadRequest("stop must be a string or a list of up to 4 non-empty strings", param="stop")
        decoding = DecodingConfig(
            temperature=temperature, top_p=top_p, max_new_tokens=max_tokens, seed=self.decoding.seed
        )
        return decoding, max_tokens, stop, n, seed

    # ---- HTTP -----------------------------------------------------------------------------------------------------

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", lambda r: web.json_response({"status": "ok"}))
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _models(self, request):
        from aiohttp import web

        return web.json_response(
            {
                "object": "list",
                "data": [{"id": self.name, "object": "model", "created": self.created, "owned_by": "alpaca-ds"}],
            }
        )

    async def _completions(self, request):
        return await self._handle(request, chat=False)

    async def _chat(self, request):
        return await self._handle(request, chat=True)

    def _error(self, e: BadRequest):
        from aiohttp import web

        kind = "invalid_request_error" if e.status < 500 else "server_error"
        return web.json_response(
            {"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}}, status=e.status
        )

    async def _handle(self, request, chat: bool):
        try:
            body = await json_object(request)
            decoding, max_tokens, stop, n, seed = self._params(body)
            if chat:
                prompts = [chat_prompt(body.get("messages"))]
            else:
                prompt = body.get("prompt")
                prompts = [prompt] if isinstance(prompt, str) else prompt
                if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                    raise BadRequest("prompt must be a string or a non-empty list of strings", param="prompt")
            stream = bool(body.get("stream"))
            usage_in_stream = bool((body.get("stream_options") or {}).get("include_usage"))
        except BadRequest as e:
            return self._error(e)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if stream:
            return await self._stream(request, rid, chat, prompts, decoding, max_tokens, stop, n, seed, usage_in_stream)
        expanded = [p for p in prompts for _ in range(n)]  # choice index = prompt index x n + j, as OpenAI
        loop = asyncio.get_running_loop()
        answers: list[Answer] = await loop.run_in_executor(
            None, lambda: self.model.generate(expanded, decoding, max_tokens, stop, seed)
        )
        choices = []
        for index, a in enumerate(answers):
            if chat:
                choices.append(
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": a.text},
                        "finish_reason": a.finish_reason,
                        "logprobs": None,
                    }
                )
            else:
                choices.append({"index": index, "text": a.text, "finish_reason": a.finish_reason, "logprobs": None})
        prompt_tokens = sum(a.prompt_tokens for a in answers[::n])
        completion_tokens = sum(a.completion_tokens for a in answers)
        from aiohttp import web

        return web.json_response(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.name,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def _stream(self, request, rid, chat, prompts, decoding, max_tokens, stop, n, seed, usage_in_stream):
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        async def send(choices: list[dict], usage: dict | None = None):
            chunk = {"id": rid, "object": kind, "created": created, "model": self.name, "choices": choices}
            if usage_in_stream:
                chunk["usage"] = usage
            await response.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())

        prompt_tokens = completion_tokens = 0
        for p_index, prompt in enumerate(prompts):
            for j in range(n):
                index = p_index * n + j
                if chat:
                    await send(
                        [
                            {
                                "index": index,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                                "logprobs": None,
                            }
                        ]
                    )
                final: Answer | None = None
                async for piece in self.model.astream(prompt, decoding, max_tokens, stop, seed):
                    if isinstance(piece, Answer):
                        final = piece
                        continue
                    delta = {"content": piece} if chat else None
                    await send(
                        [
                            {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}
                            if chat
                            else {"index": index, "text": piece, "finish_reason": None, "logprobs": None}
                        ]
                    )
                if final is None:
                    raise RuntimeError("generation ended without a result")
                if j == 0:
                    prompt_tokens += final.prompt_tokens
                completion_tokens += final.completion_tokens
                await send(
                    [
                        {"index": index, "delta": {}, "finish_reason": final.finish_reason, "logprobs": None}
                        if chat
                        else {"index": index, "text": "", "finish_reason": final.finish_reason, "logprobs": None}
                    ]
                )
        if usage_in_stream:
            await send(
                [],
                {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def serve(cfg: ServeConfig, announce=print) -> None:
    """Load the model, then serve until interrupted; announces 'serving NAME on http://HOST:PORT/v1'."""
    model = LocalModel(cfg.model, cfg.dtype, cfg.device)
    name = cfg.name or model_name(cfg.model)
    server = Server(model, name, cfg.decoding, cfg.max_new_tokens_cap)
    serve_until_interrupted(
        server.app(),
        cfg.host,
        cfg.port,
        lambda port: announce(f"serving {name} on http://{cfg.host}:{port}/v1 (Ctrl-C to stop)"),
    )

"""A local SIMULATOR of an OpenAI-compatible teacher, for tests, benchmarks and the offline quickstart.

    alpaca-ds teacher serve --port 8765 --latency 0.2 --fail-429 0.05 --fail-500 0.05

It is not a language model. It answers /v1/completions and /v1/chat/completions in Alpaca's response format by
recombining the content of seed tasks (pieces of two seed instructions around a few words from the seeds'
vocabulary; inputs and outputs from other seeds), with a share (--noise) of tasks of the kinds Alpaca's filters
reject (seed repeats, near repeats, too short, "Write a program", blacklisted words, odd first characters,
misnumbered blocks), deterministically: the answer is a function of the request
(model, prompt, choice) and --seed only, never of timing or order. It honours stop sequences and max_tokens
(finish_reason "length" when cut), reports usage counted with tiktoken, and lists models at /v1/models.

Faults, drawn per request from --seed, the request body and how many times that body was seen before (so a
retry of the same request draws again): 429 with Retry-After, 500, a hang past the client's timeout, an answer
cut at a random length with finish_reason "length", and a malformed body (a 200 whose JSON is cut short).
--require-key makes it answer 401 to any other bearer token.

Judge mode: a prompt laid out as `alpaca-ds evaluate judge`'s (alpaca_ds/evaluate/judge_prompt.txt: "## Instruction",
"## Output (a)", "## Output (b)", "## Your verdict") gets a verdict, "Output (a)" or "Output (b)", instead of tasks
(see judge_verdict: a fixed heuristic, not a judgment of quality), so the quickstart can judge offline.
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
from pathlib import Path

from alpaca_ds.common.serving import serve_until_interrupted
from alpaca_ds.generate.seeds import Example, load_seed_tasks

DEFAULT_MODEL = "gpt-3.5-turbo-instruct"
# kinds of bad task the simulator writes on purpose, so every filter has work
NOISE_KINDS = ("exact_seed", "near_seed", "short", "write_program", "blacklisted", "punctuation", "non_ascii",
               "misnumbered")


@dataclass(frozen=True)
class Faults:
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_truncate: float = 0.0
    rate_malformed: float = 0.0
    retry_after: float = 1.0
    hang_s: float = 600.0

    def total(self) -> float:
        return self.rate_429 + self.rate_500 + self.rate_timeout + self.rate_truncate + self.rate_malformed


class TeacherSim:
    def __init__(self, seeds: list[Example], seed: int = 0, latency: float = 0.0, jitter: float = 0.0,
                 faults: Faults = Faults(), require_key: str | None = None, tasks: int = 20,
                 noise: float = 0.2):
        if faults.total() > 1:
            raise ValueError("fault rates add up to more than 1")
        self.seeds = seeds
        self.seed = seed
        self.latency = latency
        self.jitter = jitter
        self.faults = faults
        self.require_key = require_key
        self.tasks = tasks
        self.noise = noise
        self.seen: Counter = Counter()
        self.counts: Counter = Counter()
        self._encodings: dict[str, object] = {}
        words = set()
        for ex in seeds:
            words.update(w for w in re.findall(r"[A-Za-z]+", f"{ex.instruction} {ex.output}") if len(w) > 2)
        self.vocab = sorted(words)

    # ---- content ------------------------------------------------------------------------------------------------

    def _enc(self, model: str):
        if model not in self._encodings:
            from alpaca_ds.api.tokens import get_encoding
            try:
                self._encodings[model] = get_encoding(model)
            except Exception:  # an unknown model name: count with cl100k_base
                self._encodings[model] = get_encoding("gpt-3.5-turbo-instruct", "cl100k_base")
        return self._encodings[model]

    def _instruction(self, rng: random.Random) -> tuple[str, bool]:
        """(instruction, well-formed block?) — with probability `noise` a task of the kinds Alpaca filters out."""
        if rng.random() < self.noise:
            kind = rng.choice(NOISE_KINDS)
            seed_words = rng.choice(self.seeds).instruction.split()
            if kind == "exact_seed":
                return " ".join(seed_words), True
            if kind == "near_seed":  # one word changed: ROUGE-L must catch it
                seed_words[rng.randrange(len(seed_words))] = rng.choice(self.vocab).lower()
                return " ".join(seed_words), True
            if kind == "short":
                return " ".join(rng.choice(self.vocab) for _ in range(rng.randint(1, 3))), True
            base = self._instruction_plain(rng)
            if kind == "write_program":
                return "Write a program that " + base[0].lower() + base[1:], True
            if kind == "blacklisted":
                return f"{base} Then draw a {rng.choice(['graph', 'picture', 'map', 'diagram'])} of it.", True
            if kind == "punctuation":
                return f'"{base}"', True
            if kind == "non_ascii":
                return f"¿{base}", True
            return base, False  # misnumbered: the block cannot be parsed
        return self._instruction_plain(rng), True

    def _instruction_plain(self, rng: random.Random) -> str:
        a = rng.choice(self.seeds).instruction.split()
        b = rng.choice(self.seeds).instruction.split()
        head = a[:rng.randint(1, max(1, len(a) // 2))]
        tail = b[rng.randint(len(b) // 2, max(len(b) // 2, len(b) - 1)):]
        middle = [rng.choice(self.vocab).lower() for _ in range(rng.randint(2, 5))]
        return " ".join(head + middle + tail)

    def _task(self, rng: random.Random) -> tuple[str, str, str, bool]:
        inst, ok = self._instruction(rng)
        inp = rng.choice(self.seeds).input.strip() if rng.random() < 0.4 else ""
        out_words = rng.choice(self.seeds).output.split()[:rng.randint(5, 60)]
        return inst, inp or "<noinput>", " ".join(out_words), ok

    def answer(self, model: str, prompt: str, choice: int, chat: bool) -> str:
        """The full answer to `prompt` before stop sequences and max_tokens are applied."""
        verdict = judge_verdict(prompt, self.vocab)
        if verdict is not None:  # a judge prompt (evaluate judge): answered in judge mode
            return verdict
        rng = random.Random(f"{self.seed}/{model}/{choice}/{hashlib.sha256(prompt.encode()).hexdigest()}")
        found = re.search(r"(\d+)\. Instruction:\s*$", prompt)
        start = int(found.group(1)) if found else 1
        parts = []
        for num in range(start, max(start, self.tasks) + 1):
            inst, inp, out, ok = self._task(rng)
            label = f"{num}." if ok else f"{num})"
            body = f"{inst}\n{label} Input:\n{inp}\n{label} Output:\n{out}\n"
            if num > start:
                parts.append(f"###\n{num}. Instruction: {body}")
            else:  # a completion continues the prompt's open "N. Instruction:"; a chat reply restates it
                parts.append(f"{num}. Instruction: {body}" if chat else f" {body}")
        return "".join(parts)

    def finish(self, model: str, text: str, stop: list[str], max_tokens: int, cut: int | None) -> tuple[str, str, int]:
        """Apply stop sequences, then max_tokens (or a forced cut): (text, finish_reason, completion tokens)."""
        ends = [text.find(s) for s in stop if s and text.find(s) >= 0]
        if ends:
            text = text[:min(ends)]
        enc = self._enc(model)
        ids = enc.encode(text, disallowed_special=())
        limit = max_tokens if cut is None else min(max_tokens, cut)
        if len(ids) > limit:
            return enc.decode(ids[:limit]), "length", limit
        return text, "stop", len(ids)

    # ---- HTTP -----------------------------------------------------------------------------------------------------

    def app(self):
        from aiohttp import web
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/sim/stats", self._stats)  # the simulator's own: requests by outcome
        return app

    async def _stats(self, request):
        from aiohttp import web
        return web.json_response({"requests": sum(self.counts.values()), "by_outcome": dict(self.counts)})

    async def _models(self, request):
        from aiohttp import web
        return web.json_response({"object": "list", "data": [
            {"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "alpaca-ds-simulator"}]})

    async def _completions(self, request):
        return await self._serve(request, chat=False)

    async def _chat(self, request):
        return await self._serve(request, chat=True)

    def _error(self, status: int, message: str, kind: str, headers=None, code=None):
        from aiohttp import web
        return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}},
                                 status=status, headers=headers)

    async def _serve(self, request, chat: bool):
        from aiohttp import web
        raw = await request.read()
        if self.require_key is not None and request.headers.get("Authorization") != f"Bearer {self.require_key}":
            self.counts["401"] += 1
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
        try:
            body = json.loads(raw)
            model = body["model"]
            max_tokens = int(body.get("max_tokens") or 16)
            n = int(body.get("n") or 1)
            stop = body.get("stop") or []
            stop = [stop] if isinstance(stop, str) else list(stop)
            if chat:
                messages = body["messages"]
                prompts = ["\n".join(str(m.get("content", "")) for m in messages)]
            else:
                prompts = body["prompt"]
                prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError("prompt must be a string or a list of strings")
        except (ValueError, KeyError, TypeError) as e:
            self.counts["400"] += 1
            return self._error(400, f"invalid request: {e}", "invalid_request_error")

        arrived = time.monotonic()
        digest = hashlib.sha256(raw).hexdigest()
        seen = self.seen[digest]
        self.seen[digest] += 1
        frng = random.Random(f"faults/{self.seed}/{digest}/{seen}")
        draw = frng.random()
        f = self.faults
        fault = None
        for name, rate in (("429", f.rate_429), ("500", f.rate_500), ("timeout", f.rate_timeout),
                           ("truncate", f.rate_truncate), ("malformed", f.rate_malformed)):
            if draw < rate:
                fault = name
                break
            draw -= rate
        self.counts[fault or "ok"] += 1
        delay = self.latency + (frng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
        if fault == "429":
            return self._error(429, "Rate limit reached (simulated).", "requests",
                               headers={"Retry-After": f"{f.retry_after:g}"}, code="rate_limit_exceeded")
        if fault in ("500", "timeout"):
            await asyncio.sleep(max(0.0, delay))
            if fault == "timeout":
                await asyncio.sleep(f.hang_s)
                return self._error(504, "Gateway timeout (simulated hang).", "server_error")
            return self._error(500, "The server had an error (simulated).", "server_error")

        enc = self._enc(model)
        choices = []
        completion_tokens = 0
        for p, prompt in enumerate(prompts):
            for j in range(n):
                index = p * n + j
                cut = frng.randint(1, max(1, max_tokens - 1)) if fault == "truncate" else None
                text, reason, used = self.finish(model, self.answer(model, prompt, j, chat), stop, max_tokens, cut)
                completion_tokens += used
                if chat:
                    choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                    "finish_reason": reason, "logprobs": None})
                else:
                    choices.append({"index": index, "text": text, "finish_reason": reason, "logprobs": None})
        prompt_tokens = sum(len(enc.encode(p, disallowed_special=())) for p in prompts)
        if chat:
            prompt_tokens += 7  # the chat format's own tokens around one message
        payload = {"id": f"sim-{digest[:24]}", "object": "chat.completion" if chat else "text_completion",
                   "created": int(time.time()), "model": model, "choices": choices,
                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}}
        text = json.dumps(payload)
        if fault == "malformed":
            text = text[:frng.randint(1, max(1, len(text) // 2))]
        # the answer is computed first and the latency counts from the request's arrival, so a burst of
        # requests is not also delayed by the simulator working through them one after another
        await asyncio.sleep(max(0.0, delay - (time.monotonic() - arrived)))
        return web.Response(text=text, content_type="application/json")


# ---- judge mode ---------------------------------------------------------------------------------------------------

_JUDGE_PROMPT = re.compile(r"## Instruction\n\n(.*?)\n\n## Output \(a\)\n\n(.*?)\n\n## Output \(b\)\n\n(.*)\n\n"
                           r"## Your verdict", re.S)


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z]+", text) if len(w) > 2]


def judge_verdict(prompt: str, vocabulary: list[str]) -> str | None:
    """The simulator's reply to a judge prompt ("Output (a)" or "Output (b)"), or None for any other prompt.

    A SIMULATED judge: deterministic, and blind to position except on a full tie. The output that shares more
    distinct words with the instruction wins; on equal overlap, the one with more words from `vocabulary` (the
    seeds' words: real words rather than fragments; in practice, the longer fluent answer); on a full tie it says
    "Output (a)", so asking in both orders, as `evaluate judge` does, gives a tie. It measures nothing about quality.
    """
    found = _JUDGE_PROMPT.search(prompt)
    if not found:
        return None
    instruction, a, b = found.groups()
    wanted = set(_words(instruction))
    known = {w.lower() for w in vocabulary}

    def score(output: str) -> tuple[int, int]:
        words = _words(output)
        return len(wanted & set(words)), sum(w in known for w in words)

    return "Output (b)" if score(b) > score(a) else "Output (a)"


def serve(port: int, seeds_path: str | Path, host: str = "127.0.0.1", seed: int = 0, latency: float = 0.0,
          jitter: float = 0.0, faults: Faults = Faults(), require_key: str | None = None, tasks: int = 20,
          noise: float = 0.2, announce=print) -> None:
    """Run the simulator until interrupted; announces 'teacher simulator listening on http://HOST:PORT/v1'."""
    seeds = [t.example for t in load_seed_tasks(seeds_path)]
    sim = TeacherSim(seeds, seed=seed, latency=latency, jitter=jitter, faults=faults, require_key=require_key,
                     tasks=tasks, noise=noise)
    sim._enc(DEFAULT_MODEL)  # load tiktoken before announcing, so the first request is not slow
    serve_until_interrupted(sim.app(), host, port,
                            lambda bound: announce(f"teacher simulator listening on http://{host}:{bound}/v1"),
                            backlog=1024)

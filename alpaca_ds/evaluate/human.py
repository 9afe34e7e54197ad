"""Blind pairwise judgments by a person, on a small local web page.

    alpaca-ds evaluate human --a eval/text_davinci_003/selfinstruct/model_outputs.json \
                             --b eval/tiny/selfinstruct/model_outputs.json --out eval/human/judgments.jsonl

Serves http://127.0.0.1:PORT/?t=TOKEN (printed; the token keeps other pages in the browser from posting
judgments). Each item shows one instruction and the two answers as "Answer A" and "Answer B", in an order drawn
per item from --seed, without model names; the rater picks A, B or a tie (buttons, or the keys a / b / t).

Every judgment is appended to the JSONL and fsync'd before the page moves on, so a closed tab or a killed
server loses nothing; restarting the same command continues with the first item not judged. Each line is an
AlpacaEval annotation (instruction, output_1 = --a, output_2 = --b, preference 1 / 2 / 0 for a tie) plus what
was shown (`shown_as_a`: 1 or 2), the rater and the time, so `alpaca-ds evaluate winrate FILE` reads it as it
reads a judge's annotations; the page shows that report when the last item is done.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import secrets
import time
from importlib import resources
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.journal import Journal, read_jsonl
from alpaca_ds.common.serving import serve_until_interrupted
from alpaca_ds.evaluate.eval_sets import Pair, pair_outputs
from alpaca_ds.evaluate.winrate import report as winrate_report

CHOICES = ("A", "B", "tie")


class HumanSession:
    def __init__(
        self,
        a: str | Path,
        b: str | Path,
        out: str | Path,
        seed: int = 0,
        rater: str = "rater",
        limit: int | None = None,
        token: str | None = None,
    ):
        self.pairs = pair_outputs(a, b, limit)
        self.out = Path(out)
        self.seed = seed
        self.rater = rater
        self.token = token or secrets.token_urlsafe(16)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        rows, good = read_jsonl(self.out)
        self.judged: dict[int, dict] = {}
        for n, row in enumerate(rows, start=1):
            i = row.get("item")
            ours = isinstance(i, int) and 0 <= i < len(self.pairs)
            if not ours or row.get("instruction") != self.pairs[i].instruction:
                raise UserError(
                    f"{self.out}:{n}: this judgment is not about the pairs of --a/--b (item {i!r}); "
                    "use another --out for another comparison"
                )
            self.judged[i] = row
        self.journal = Journal(self.out, good)
        self._shown_at: dict[int, float] = {}

    def swapped(self, i: int) -> bool:
        """Whether item i shows output_2 as "Answer A": a fair coin per item, fixed by the seed."""
        digest = hashlib.sha256(f"{self.seed}/{i}/{self.pairs[i].instruction}".encode()).digest()
        return random.Random(digest).random() < 0.5

    def next_item(self) -> int | None:
        return next((p.index for p in self.pairs if p.index not in self.judged), None)

    def state(self) -> dict:
        i = self.next_item()
        item = None
        if i is not None:
            p = self.pairs[i]
            first, second = (p.output_2, p.output_1) if self.swapped(i) else (p.output_1, p.output_2)
            item = {"item": i, "instruction": p.instruction, "a": first, "b": second}
            self._shown_at.setdefault(i, time.monotonic())
        out = {"total": len(self.pairs), "done": len(self.judged), "item": item}
        if i is None:
            out["report"] = self.report() if self.judged else None
        return out

    def judge(self, i: int, choice: str) -> dict:
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}")
        if not isinstance(i, int) or not 0 <= i < len(self.pairs):
            raise ValueError(f"no item {i!r}")
        if i in self.judged:  # a double click or a resent request: the first judgment stands
            return self.judged[i]
        p: Pair = self.pairs[i]
        shown_as_a = 2 if self.swapped(i) else 1
        if choice == "tie":
            preference = 0
        else:
            picked_a = choice == "A"
            preference = shown_as_a if picked_a else 3 - shown_as_a
        started = self._shown_at.pop(i, None)
        row = {
            **p.annotation(),
            "preference": preference,
            "annotator": f"human:{self.rater}",
            "item": i,
            "shown_as_a": shown_as_a,
            "choice": choice,
            "rater": self.rater,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 1) if started is not None else None,
        }
        self.journal.append(row)  # on disk (fsync) before the page is told
        self.judged[i] = row
        return row

    def report(self) -> dict:
        return winrate_report([self.judged[i] for i in sorted(self.judged)], str(self.out))

    def close(self) -> None:
        self.journal.close()


def page_html() -> bytes:
    return (resources.files("alpaca_ds.evaluate") / "static" / "human.html").read_bytes()


def make_app(session: HumanSession):
    from aiohttp import web

    def authorised(request) -> bool:
        return secrets.compare_digest(request.headers.get("X-Token", ""), session.token)

    async def index(request):
        return web.Response(
            body=page_html(), content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-store"}
        )

    async def state(request):
        if not authorised(request):
            return web.json_response({"error": "missing or wrong token; open the URL the command printed"}, status=403)
        return web.json_response(session.state())

    async def judge(request):
        if not authorised(request):
            return web.json_response({"error": "missing or wrong token; open the URL the command printed"}, status=403)
        try:
            body = await request.json()
            await asyncio.get_running_loop().run_in_executor(None, session.judge, body.get("item"), body.get("choice"))
        except (ValueError, AttributeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(session.state())

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_get("/", index)
    app.router.add_get("/api/state", state)
    app.router.add_post("/api/judge", judge)
    return app


def serve(session: HumanSession, host: str = "127.0.0.1", port: int = 8088, announce=print) -> None:
    """Serve the page until interrupted; announces 'human A/B page: http://HOST:PORT/?t=TOKEN'."""

    def ready(bound: int) -> None:
        announce(
            f"human A/B page: http://{host}:{bound}/?t={session.token}  ({len(session.judged)}/"
            f"{len(session.pairs)} judged; writing {session.out}; Ctrl-C to stop)"
        )

    try:
        serve_until_interrupted(make_app(session), host, port, ready)
    finally:
        session.close()


def summary(session: HumanSession) -> str:
    if not session.judged:
        return f"no judgments yet in {session.out}"
    o = session.report()["overall"]
    return (
        f"{len(session.judged)}/{len(session.pairs)} judged in {session.out}; win rate of output_2 over output_1 "
        f"so far: {o['win_rate']:.1f}% (alpaca-ds evaluate winrate {session.out} for the report)"
    )

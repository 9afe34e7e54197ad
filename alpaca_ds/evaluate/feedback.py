"""The demo's feedback file and its summary.

    alpaca-ds demo summary demo/feedback.jsonl [--json]

feedback.jsonl is append-only; each line is fsync'd before the page is told it is saved. Every line is the whole
record of one answer as it stands at that time -- id, time, client (a random id the browser keeps), model,
instruction, input, prompt (Alpaca's template), answer, decoding, finish_reason, rating ("up", "down" or null),
comment, and `refused` / `withheld` (the content filter's reason) where it applied. A new line is written when
the answer is complete and again at each rating or comment; the last line of an id is its current state.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.journal import Journal, read_jsonl

RATINGS = ("up", "down")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def latest(rows: list[dict]) -> dict[str, dict]:
    """The current state of each answer: the last line of each id, in the order the ids first appeared."""
    out: dict[str, dict] = {}
    for row in rows:
        if isinstance(row.get("id"), str):
            out[row["id"]] = row
    return out


class FeedbackLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows, good = read_jsonl(self.path)
        self.records = latest(rows)
        self.journal = Journal(self.path, good)

    async def save(self, record: dict) -> dict:
        """Write `record` as the current state of its id; on disk (fsync'd) when this returns."""
        record = {**record, "time": now()}
        await self.journal.commit(record)
        self.records[record["id"]] = record
        return record

    def history(self, client: str, n: int = 20) -> list[dict]:
        """The last `n` answers shown to one browser, oldest first."""
        mine = [r for r in self.records.values() if r.get("client") == client and r.get("answer") is not None]
        return mine[-n:]

    def close(self) -> None:
        self.journal.close()


def summarize(path: str | Path, worst: int = 10) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such feedback file (alpaca-ds demo writes it; see its feedback key)")
    records = list(latest(read_jsonl(path)[0]).values())
    answers = [r for r in records if r.get("answer") is not None]

    def counts(rows: list[dict]) -> dict:
        up = sum(r.get("rating") == "up" for r in rows)
        down = sum(r.get("rating") == "down" for r in rows)
        return {
            "answers": len(rows),
            "rated": up + down,
            "up": up,
            "down": down,
            "share_up": up / (up + down) if up + down else None,
            "comments": sum(bool(r.get("comment")) for r in rows),
            "withheld": sum(bool(r.get("withheld")) for r in rows),
        }

    models = sorted({str(r.get("model")) for r in answers})
    down = [r for r in answers if r.get("rating") == "down"]
    down.sort(key=lambda r: r.get("time") or "", reverse=True)
    down.sort(key=lambda r: not r.get("comment"))  # newest first, those with a comment (saying why) before
    return {
        "source": str(path),
        "overall": counts(answers),
        "refused_prompts": len(records) - len(answers),
        "by_model": {m: counts([r for r in answers if str(r.get("model")) == m]) for m in models},
        "worst": [
            {k: r.get(k) for k in ("id", "time", "model", "instruction", "input", "answer", "comment")}
            for r in down[:worst]
        ],
    }


def _short(text, n: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return (text[:n] + "…" if len(text) > n else text).replace("|", "\\|")


def markdown(s: dict) -> str:
    o = s["overall"]
    share = "n/a" if o["share_up"] is None else f"{100 * o['share_up']:.1f}%"
    lines = [
        f"# Demo feedback: {s['source']}",
        "",
        f"{o['answers']} answers, {o['rated']} rated: {o['up']} thumbs up, {o['down']} thumbs down "
        f"({share} up); {o['comments']} with a comment; {o['withheld']} answers withheld and "
        f"{s['refused_prompts']} prompts refused by the content filter.",
        "",
        "| model | answers | rated | up | down | share up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, c in s["by_model"].items():
        share = "n/a" if c["share_up"] is None else f"{100 * c['share_up']:.1f}%"
        lines.append(f"| {m} | {c['answers']} | {c['rated']} | {c['up']} | {c['down']} | {share} |")
    if s["worst"]:
        lines += [
            "",
            "## Rated thumbs down (commented first)",
            "",
            "| instruction | answer | comment |",
            "|---|---|---|",
        ]
        lines += [
            f"| {_short(w['instruction'])} | {_short(w['answer'])} | {_short(w['comment'])} |" for w in s["worst"]
        ]
    return "\n".join(lines) + "\n"

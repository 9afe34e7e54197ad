"""The SIMULATOR's log-probabilities, in the shapes OpenAI's endpoints return them.

    chat:        {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
                  "refusal": null}
    completions: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}], "text_offset": [...]}

The first token of a judge reply has the distribution judge.py gives it; every other token is certain (logprob 0,
itself its only alternative): the simulator writes deterministically, and only the judge's first token is read.
"""

from __future__ import annotations

import math


def asked(body: dict, chat: bool) -> int | None:
    """How many top log-probabilities a request asks for per token (0: only the chosen token's), or None."""
    if chat:
        return int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
    return None if body.get("logprobs") is None else int(body["logprobs"])


def logprobs(enc, text: str, first: dict[str, float] | None, top: int, chat: bool, offset: int = 0) -> dict:
    """The logprobs object of a choice whose text is `text`; `first`: the first token's probabilities."""
    positions = []
    for k, token_id in enumerate(enc.encode(text, disallowed_special=())):
        token = enc.decode([token_id])
        dist = first if k == 0 and first and token in first else {token: 1.0}
        ranked = sorted(dist.items(), key=lambda kv: -kv[1])[:top]
        positions.append((token, math.log(dist[token]), [(t, math.log(p)) for t, p in ranked]))
    if chat:

        def entry(t, lp):
            return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}

        return {
            "content": [{**entry(t, lp), "top_logprobs": [entry(*x) for x in alts]} for t, lp, alts in positions],
            "refusal": None,
        }
    offsets, at = [], offset
    for t, _, _ in positions:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": [t for t, _, _ in positions],
        "token_logprobs": [lp for _, lp, _ in positions],
        "top_logprobs": [dict(alts) for _, _, alts in positions],
        "text_offset": offsets,
    }

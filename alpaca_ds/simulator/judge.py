"""The SIMULATOR's judge mode: a verdict for a prompt that shows two outputs, with log-probabilities.

It reads a judge prompt the way a judge model would: whatever the layout around them, a prompt that labels two
outputs "Output (a)" and "Output (b)" -- or "Output (m)" and "Output (M)", the identifiers AlpacaEval's weighted
annotators use -- on lines of their own (the labels the judge is asked to answer with) is a judge prompt; the text
from the first label to the second is the first output, from the second to the next heading-like line (or the end)
the second, and everything before the first output is the task. Any other prompt is None.

A SIMULATED judge: deterministic, and blind to position except on a full tie. The output that shares more
distinct words with the task wins; on equal overlap, the one with more words from `vocabulary` (real words rather
than fragments), then the one with more words; on a full tie the first, so asking in both orders, as
`evaluate judge` does, gives a tie. It replies "Output (a)" / "Output (b)", or "m" / "M" to an m/M prompt. An
output containing NO_VERDICT gets a reply that names neither (as a judge that refuses), so the no-verdict path
can be exercised. It measures nothing about quality.

Its first token's probabilities (what the server reports as log-probabilities for an m/M prompt): P(second
better) = σ(margin), the margin being the first score difference that is not 0 (overlap ×1, known words ×0.5,
words ×0.1), so they follow the verdict without being 0 or 1; "m" and "M" share 0.9 of the mass and three other
tokens the rest, so a reader must normalise over the two. A refusal's first token puts no mass on m or M.
"""

from __future__ import annotations

import math
import re

NO_VERDICT = "NOVERDICT"
_LABEL = re.compile(r"^[#*\s]*Output \(([abmM])\)[:*\s]*$", re.M)
_HEADING = re.compile(r"^\s*(#+ |[A-Z][^\n]{0,60}[:?]\s*$)", re.M)  # "## Verdict", "Answer:", "Which is better?"
_PAIRS = (["a", "b"], ["m", "M"])
_OTHERS = {"Both": 0.05, "The": 0.03, "Output": 0.02}  # beside m and M, 0.1 in all
_REFUSAL = {"Both": 0.7, "The": 0.2, "Neither": 0.05, "Each": 0.03, "I": 0.02}


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z]+", text) if len(w) > 2]


def split_judge_prompt(prompt: str) -> tuple[str, str, str, list[str]] | None:
    """(task, first output, second output, their labels) of a judge prompt, or None."""
    labels = list(_LABEL.finditer(prompt))
    order = [m.group(1) for m in labels]
    if len(labels) < 2 or order[-2:] not in _PAIRS:
        return None
    la, lb = labels[-2], labels[-1]
    a = prompt[la.end() : lb.start()]
    rest = prompt[lb.end() :]
    end = _HEADING.search(rest)
    b = rest[: end.start()] if end else rest
    return prompt[: la.start()], a.strip(), b.strip(), order[-2:]


def judge_reply(prompt: str, vocabulary: list[str]) -> tuple[str, dict[str, float] | None] | None:
    """(reply, probabilities of its first token -- None: the a/b convention, whose first token is "Output") for a
    judge prompt, or None for any other prompt."""
    found = split_judge_prompt(prompt)
    if found is None:
        return None
    task, a, b, labels = found
    weighted = labels == ["m", "M"]
    if NO_VERDICT in a or NO_VERDICT in b:
        return "Both answers have merits.", dict(_REFUSAL) if weighted else None
    wanted = set(_words(task))
    known = {w.lower() for w in vocabulary}

    def score(output: str) -> tuple[int, int, int]:
        words = _words(output)
        return len(wanted & set(words)), sum(w in known for w in words), len(words)

    second = score(b) > score(a)
    if not weighted:
        return ("Output (b)" if second else "Output (a)"), None
    margin = next((d * w for d, w in zip(map(int.__sub__, score(b), score(a)), (1.0, 0.5, 0.1)) if d), 0.0)
    p = 1 / (1 + math.exp(-max(-30.0, min(30.0, margin))))
    return ("M" if second else "m"), {"m": 0.9 * (1 - p), "M": 0.9 * p, **_OTHERS}


def judge_verdict(prompt: str, vocabulary: list[str]) -> str | None:
    """The simulator's reply to a judge prompt, or None for any other prompt."""
    reply = judge_reply(prompt, vocabulary)
    return reply[0] if reply else None

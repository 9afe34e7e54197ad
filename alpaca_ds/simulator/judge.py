"""The SIMULATOR's judge mode: a verdict, "Output (a)" or "Output (b)", for a prompt that shows two outputs.

It reads a judge prompt the way a judge model would: whatever the layout around them, a prompt that labels two
outputs "Output (a)" and "Output (b)" on lines of their own (the labels the judge is asked to answer with) is a
judge prompt; the text from the first label to the second is output (a), from the second to the next heading-like
line (a markdown heading, or a short line ending in ":" or "?") or the end is output (b), and everything before
output (a) is the task. Any other prompt is None.

A SIMULATED judge: deterministic, and blind to position except on a full tie. The output that shares more
distinct words with the task wins; on equal overlap, the one with more words from `vocabulary` (real words rather
than fragments), then the one with more words; on a full tie it says "Output (a)", so asking in both orders, as
`evaluate judge` does, gives a tie. An output containing NO_VERDICT gets a reply that names neither (as a judge
that refuses), so the no-verdict path can be exercised. It measures nothing about quality.
"""
from __future__ import annotations

import re

NO_VERDICT = "NOVERDICT"
_LABEL = re.compile(r"^[#*\s]*Output \(([ab])\)[:*\s]*$", re.M)
_HEADING = re.compile(r"^\s*(#+ |[A-Z][^\n]{0,60}[:?]\s*$)", re.M)  # "## Verdict", "Answer:", "Which is better?"


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z]+", text) if len(w) > 2]


def split_judge_prompt(prompt: str) -> tuple[str, str, str] | None:
    """(task, output a, output b) of a judge prompt, or None."""
    labels = list(_LABEL.finditer(prompt))
    order = [m.group(1) for m in labels]
    if len(labels) < 2 or order[-2:] != ["a", "b"]:
        return None
    la, lb = labels[-2], labels[-1]
    a = prompt[la.end():lb.start()]
    rest = prompt[lb.end():]
    end = _HEADING.search(rest)
    b = rest[:end.start()] if end else rest
    return prompt[:la.start()], a.strip(), b.strip()


def judge_verdict(prompt: str, vocabulary: list[str]) -> str | None:
    """The simulator's reply to a judge prompt, or None for any other prompt."""
    found = split_judge_prompt(prompt)
    if found is None:
        return None
    task, a, b = found
    if NO_VERDICT in a or NO_VERDICT in b:
        return "Both answers have merits."
    wanted = set(_words(task))
    known = {w.lower() for w in vocabulary}

    def score(output: str) -> tuple[int, int, int]:
        words = _words(output)
        return len(wanted & set(words)), sum(w in known for w in words), len(words)

    return "Output (b)" if score(b) > score(a) else "Output (a)"

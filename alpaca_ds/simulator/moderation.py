"""The SIMULATOR's /v1/moderations, in OpenAI's request and response shape:

    {"input": str | [str, ...], "model": optional}
    -> {"id": "modr-...", "model": ..., "results": [{"flagged": bool, "categories": {name: bool},
                                                    "category_scores": {name: float}}, ...]}    one per input

A text is flagged, in `category`, when it holds one of `words` (whole words, any case); the texts asked about are
kept in `inputs`, in order. Like the completion endpoints it wants the simulator's key when one is required.
"""

from __future__ import annotations

import hashlib
import re

# OpenAI's omni-moderation categories
CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


class Moderation:
    def __init__(self, words: tuple[str, ...] | list[str] = (), category: str = "violence"):
        if category not in CATEGORIES:
            raise ValueError(f"unknown moderation category {category!r} (one of {', '.join(CATEGORIES)})")
        alternatives = "|".join(re.escape(w) for w in words)
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if words else None
        self.category = category
        self.inputs: list[str] = []

    def answer(self, body: dict) -> dict:
        """The response to a request body; ValueError for one OpenAI would refuse."""
        texts = body["input"]
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("input must be a string or a non-empty list of strings")
        self.inputs.extend(texts)
        results = []
        for text in texts:
            flagged = bool(self.pattern and self.pattern.search(text))
            results.append(
                {
                    "flagged": flagged,
                    "categories": {c: flagged and c == self.category for c in CATEGORIES},
                    "category_scores": {c: (0.9 if flagged and c == self.category else 0.001) for c in CATEGORIES},
                }
            )
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:24]
        return {"id": f"modr-{digest}", "model": body.get("model") or "omni-moderation-latest", "results": results}

"""The demo's content filter: a word list, an OpenAI-compatible moderation endpoint, or both (filter.* of the
demo config). A prompt that fails is refused before the model sees it; an answer that fails is withheld.

The word list is checked as the answer streams (before each piece is sent, so a listed word is not shown);
the moderation endpoint judges the whole answer once it is complete. When the endpoint cannot be reached the
filter fails closed: the prompt is refused, the answer withheld, and the reason says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.evaluate.config import ContentFilterConfig


def read_words(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"filter.words: {path}: cannot read the word list: {e.strerror or e}") from None
    words = [w.strip() for w in lines if w.strip() and not w.strip().startswith("#")]
    if not words:
        raise UserError(f"filter.words: {path}: no words (one word or phrase a line; # starts a comment)")
    return words


class ContentFilter:
    def __init__(self, cfg: ContentFilterConfig):
        words = read_words(cfg.words) if cfg.words else []
        # whole words only: "ass" must not refuse "class"; longer phrases first so the reason names the longest
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if words else None
        self.client = None
        self.model = cfg.moderation_model
        if cfg.moderation_url:
            from openai import AsyncOpenAI

            key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
            if cfg.api_key_env and not key:
                raise UserError(f"filter.api_key_env: the environment variable {cfg.api_key_env} is not set")
            self.client = AsyncOpenAI(
                base_url=cfg.moderation_url.rstrip("/"), api_key=key or "none", timeout=30, max_retries=2
            )

    @property
    def active(self) -> bool:
        return self.pattern is not None or self.client is not None

    def listed(self, text: str) -> str | None:
        """Why `text` fails the word list, or None."""
        m = self.pattern.search(text) if self.pattern else None
        return f"word list: {m.group(0)!r}" if m else None

    async def check(self, text: str) -> str | None:
        """Why `text` fails the filter (word list, then moderation endpoint), or None."""
        reason = self.listed(text)
        if reason or self.client is None:
            return reason
        import openai

        try:
            kwargs = {"model": self.model} if self.model else {}
            result = (await self.client.moderations.create(input=text, **kwargs)).results[0]
        except (openai.OpenAIError, IndexError) as e:
            return f"moderation endpoint unavailable ({type(e).__name__}: {str(e)[:200]})"
        if not result.flagged:
            return None
        categories = sorted(k for k, v in result.categories.model_dump().items() if v)
        return f"moderation: {', '.join(categories) or 'flagged'}"

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

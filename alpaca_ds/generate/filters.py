"""Alpaca's filters on a generated instruction, each named so rejections can be counted by reason.

In Alpaca's order: word count (3 < words <= 150), blacklisted whole words, the "Write a program" prefix, a first
character that is punctuation or not ASCII. ROUGE-L de-duplication comes after these (see run.py / rouge.py).
"""

from __future__ import annotations

import re
import string

from alpaca_ds.generate.config import FilterConfig


class Filters:
    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        words = sorted(cfg.blacklist, key=len, reverse=True)
        # one alternation is the same test as Alpaca's per-word re.search(r"\b(word)\b", s, re.IGNORECASE)
        self._blacklist = (
            re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE) if words else None
        )

    def reject_reason(self, instruction: str) -> str | None:
        cfg = self.cfg
        n = len(instruction.split())
        if n < cfg.min_words or n == 0:
            return "too_short"
        if n > cfg.max_words:
            return "too_long"
        if self._blacklist is not None and self._blacklist.search(instruction):
            return "blacklisted_word"
        if any(instruction.startswith(p) for p in cfg.banned_prefixes):
            return "banned_prefix"
        if cfg.reject_punctuation_start and instruction[0] in string.punctuation:
            return "starts_with_punctuation"
        if cfg.reject_non_ascii_start and not instruction[0].isascii():
            return "starts_non_ascii"
        return None

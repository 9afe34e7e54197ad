"""Loading a model's tokenizer so that its ids are the model's, and naming it so a mismatch is caught.

transformers 5 builds its `LlamaTokenizer` class from a SentencePiece `tokenizer.model` with ids that differ
from SentencePiece's (e.g. on repeated spaces). Its generic `TokenizersBackend` keeps SentencePiece's ids, so a
folder that has `tokenizer.model` but no `tokenizer.json` is loaded through it; a bare SentencePiece folder (no
`tokenizer_config.json`) gets LLaMA's convention of a BOS token in front. tests/unit/dataset/test_alpaca_reference.py pins this
against SentencePiece itself on the LLaMA tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_bytes, sha256_file
from alpaca_ds.dataset.template import DEFAULT_BOS_TOKEN, DEFAULT_EOS_TOKEN, DEFAULT_PAD_TOKEN, DEFAULT_UNK_TOKEN

# Files that define a tokenizer's behaviour; their hashes make up its identity.
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)


def tokenizer_dir(name_or_path: str) -> Path:
    """The local folder holding the tokenizer's files (a hub id resolves to its cached snapshot)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise UserError(f"tokenizer {name_or_path!r}: not a folder holding tokenizer files")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=list(TOKENIZER_FILES)))
    except Exception as e:  # the hub client raises many kinds; all mean the same to the user
        raise UserError(
            f"tokenizer {name_or_path!r}: not a local folder and not fetchable from the hub ({e})"
        ) from None


def load_tokenizer(name_or_path: str):
    """The model's tokenizer as a transformers tokenizer, loaded so its ids match the model's."""
    folder = tokenizer_dir(name_or_path)
    # Imported where used: `transformers.AutoTokenizer` pulls in torch (~190 MiB, ~1 s) and a build needs neither.
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    try:
        if (folder / "tokenizer.model").exists() and not (folder / "tokenizer.json").exists():
            kwargs: dict[str, Any] = {}
            if not (folder / "tokenizer_config.json").exists():
                kwargs = dict(
                    add_bos_token=True,
                    bos_token=DEFAULT_BOS_TOKEN,
                    eos_token=DEFAULT_EOS_TOKEN,
                    unk_token=DEFAULT_UNK_TOKEN,
                )
            return _from_sentencepiece(TokenizersBackend, folder, kwargs)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise UserError(f"tokenizer {name_or_path!r}: cannot be loaded: {e}") from None


def _from_sentencepiece(backend, folder: Path, kwargs: dict[str, Any]):
    """`backend.from_pretrained(folder, **kwargs)` on a bare tokenizer.model, with the conversion to a fast tokenizer
    (0.5-0.8 s for LLaMA's) done once: its result, byte for byte the tokenizer.json it builds, is cached under
    $XDG_CACHE_HOME/alpaca-ds/tokenizers, keyed by the model file, the options and the converting libraries'
    versions, and later loads read it (~0.1 s)."""
    from importlib import metadata

    versions = [metadata.version(name) for name in ("transformers", "tokenizers")]
    key = hashlib.sha256(
        json.dumps([sha256_file(folder / "tokenizer.model"), sorted(kwargs.items()), versions]).encode()
    ).hexdigest()
    cached = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alpaca-ds" / "tokenizers"
    cached = cached / f"{key}.json"
    if cached.is_file():
        try:
            return backend.from_pretrained(str(folder), tokenizer_file=str(cached), **kwargs)
        except Exception:  # an unreadable cache file: convert again, and replace it
            pass
    tokenizer = backend.from_pretrained(str(folder), **kwargs)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    except OSError:
        pass  # a read-only home: every load converts, as without the cache
    return tokenizer


def add_missing_special_tokens(tokenizer) -> dict[str, str]:
    """Add the special tokens Alpaca adds when missing ([PAD] for LLaMA); returns what was added."""
    defaults = {
        "pad_token": DEFAULT_PAD_TOKEN,
        "eos_token": DEFAULT_EOS_TOKEN,
        "bos_token": DEFAULT_BOS_TOKEN,
        "unk_token": DEFAULT_UNK_TOKEN,
    }
    missing = {name: tok for name, tok in defaults.items() if getattr(tokenizer, name) is None}
    if missing:
        tokenizer.add_special_tokens(missing)
    return missing


def tokenizer_identity(name_or_path: str) -> dict[str, Any]:
    """Name and content hash of a tokenizer's files; equal hashes mean the same tokenizer wherever it lives."""
    folder = tokenizer_dir(name_or_path)
    files = {name: sha256_file(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}
    if not files:
        raise UserError(f"tokenizer {name_or_path!r}: {folder} holds none of {', '.join(TOKENIZER_FILES)}")
    combined = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in sorted(files.items())).encode()).hexdigest()
    return {"name_or_path": name_or_path, "sha256": combined, "files": files}

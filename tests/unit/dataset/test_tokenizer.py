"""Loading a bare SentencePiece tokenizer: the conversion to a fast tokenizer is cached and loads the same."""

from __future__ import annotations

import json

from transformers.tokenization_utils_tokenizers import TokenizersBackend

from alpaca_ds.dataset.tokenizer import load_tokenizer
from helpers.paths import ROOT

FOLDER = ROOT / "data" / "tokenizer"  # tokenizer.model only, as LLaMA's
TEXTS = ["Give three tips.", "  two  spaces\n\nand lines</s>", "<s>special tokens</s> inside", "ünïcödé 数字 123"]


def test_the_converted_tokenizer_is_cached_and_loads_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    original = TokenizersBackend.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs.get("tokenizer_file"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(TokenizersBackend, "from_pretrained", classmethod(spy))
    converted = load_tokenizer(str(FOLDER))
    (cache,) = (tmp_path / "alpaca-ds" / "tokenizers").glob("*.json")
    assert cache.read_text() == converted.backend_tokenizer.to_str()
    cached = load_tokenizer(str(FOLDER))
    assert calls == [None, str(cache)]  # converted once, then read from the cache
    assert cached.backend_tokenizer.to_str() == converted.backend_tokenizer.to_str()
    assert cached(TEXTS)["input_ids"] == converted(TEXTS)["input_ids"]
    assert (len(cached), cached.all_special_tokens) == (len(converted), converted.all_special_tokens)

    cache.write_text("{not json")  # a damaged cache file: converted again and replaced
    again = load_tokenizer(str(FOLDER))
    assert again(TEXTS)["input_ids"] == converted(TEXTS)["input_ids"]
    assert json.loads(cache.read_text()) == json.loads(converted.backend_tokenizer.to_str())

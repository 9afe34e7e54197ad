"""Prompts, input ids and labels equal an independent reference of Alpaca's train.py on all 52,002 records.

The reference below is written from Alpaca's train.py (PROMPT_DICT, _tokenize_fn, preprocess) with the LLaMA
tokenizer of its time driven through SentencePiece itself: special-token strings in the text are split out and
become their ids (the slow tokenizer's added-token trie), every other chunk is SentencePiece-encoded on its own,
BOS goes in front, and `truncation=True, max_length=...` keeps the first max_length ids. Nothing here comes from
alpaca_ds except the code under test.
"""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from alpaca_ds.dataset.encode import Encoder, Preprocess, tokenize_records
from alpaca_ds.dataset.records import read_records
from alpaca_ds.dataset.shards import TokenizedDataset
from alpaca_ds.dataset.template import format_prompt
from alpaca_ds.dataset.tokenizer import add_missing_special_tokens, load_tokenizer
from helpers.data import build_dataset
from helpers.paths import ALPACA_DATA, LLAMA_TOKENIZER, needs_shared

pytestmark = needs_shared

IGNORE_INDEX = -100
PROMPT_DICT = {  # Alpaca's train.py, verbatim
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}
SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "[PAD]": 32000}  # LLaMA's, plus the [PAD] Alpaca adds
SPLIT = re.compile("(" + "|".join(map(re.escape, SPECIALS)) + ")")


@pytest.fixture(scope="module")
def sp():
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(LLAMA_TOKENIZER / "tokenizer.model"))


@pytest.fixture(scope="module")
def alpaca():
    return json.loads(ALPACA_DATA.read_text())


def reference_tokenize(sp, text: str, max_length: int) -> list[int]:
    ids = [1]
    for i, part in enumerate(SPLIT.split(text)):
        if i % 2:
            ids.append(SPECIALS[part])
        elif part:
            ids.extend(sp.encode(part))
    return ids[:max_length]


def reference_preprocess(sp, example: dict, max_length: int) -> tuple[str, list[int], list[int]]:
    if example.get("input", "") != "":
        source = PROMPT_DICT["prompt_input"].format_map(example)
    else:
        source = PROMPT_DICT["prompt_no_input"].format_map(example)
    target = f"{example['output']}</s>"
    input_ids = reference_tokenize(sp, source + target, max_length)
    labels = copy.deepcopy(input_ids)
    source_len = len(reference_tokenize(sp, source, max_length))
    labels[:source_len] = [IGNORE_INDEX] * min(source_len, len(labels))
    return source, input_ids, labels


def assert_matches_reference(sp, alpaca, ds: TokenizedDataset, max_length: int) -> tuple[int, int]:
    """Every example equals the reference for its record; returns (truncated, prompts filling max_length)."""
    prompt_fills = truncated = 0
    for i in range(len(ds)):
        record = alpaca[ds.record_index(i)]
        source, ids, labels = reference_preprocess(sp, record, max_length)
        example = ds[i]
        assert example["input_ids"].tolist() == ids, f"input ids of record {ds.record_index(i)}"
        assert example["labels"].tolist() == labels, f"labels of record {ds.record_index(i)}"
        prompt_fills += all(label == IGNORE_INDEX for label in labels)
        truncated += len(ids) == max_length and ids[-1] != 2
    return truncated, prompt_fills


def test_prompts_byte_identical(alpaca):
    for record in alpaca:
        expected = PROMPT_DICT["prompt_input"] if record.get("input", "") != "" else PROMPT_DICT["prompt_no_input"]
        assert format_prompt(record["instruction"], record["input"]) == expected.format_map(record)


def test_transformers_loading_path_reproduces_sentencepiece(sp, alpaca):
    tok = load_tokenizer(str(LLAMA_TOKENIZER))
    strings = [r[k] for r in alpaca[::25] for k in ("instruction", "input", "output")]
    strings += ["  two leading spaces", "a  b   c", "x\n</s>\ny", "", " ", "émoji 😀 中文"]
    assert tok(strings)["input_ids"] == [reference_tokenize(sp, s, 10**9) for s in strings]
    assert add_missing_special_tokens(tok) == {"pad_token": "[PAD]"}
    assert (len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (32001, 32000, 1, 2)


@pytest.mark.slow
def test_all_52002_records_equal_reference(sp, alpaca, tmp_path):
    manifest = build_dataset(tmp_path / "ds", f"input={ALPACA_DATA}", f"tokenizer={LLAMA_TOKENIZER}")
    ds = TokenizedDataset(tmp_path / "ds")
    assert len(ds) == len(alpaca) == 52002
    assert sorted(ds.record_index(i) for i in range(len(ds))) == list(range(52002))
    assert manifest["tokenizer"]["encoder"] == "sentencepiece"
    truncated, fills = assert_matches_reference(sp, alpaca, ds, 512)
    assert manifest["counts"]["truncated"] == truncated > 0
    assert manifest["counts"]["no_supervised_tokens"] == fills


def test_prompt_reaching_max_length_masks_everything(sp, alpaca, tmp_path):
    # At max_length 64 many prompts alone fill the window: Alpaca then masks every label; so must we. (437 of
    # the first 1000 records do; the full 52K is test_all_52002_records_equal_reference's, marked slow.)
    sub = alpaca[:1000]
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in sub))
    manifest = build_dataset(tmp_path / "ds", f"input={subset}", f"tokenizer={LLAMA_TOKENIZER}", "max_length=64")
    ds = TokenizedDataset(tmp_path / "ds")
    _, fills = assert_matches_reference(sp, sub, ds, 64)
    assert fills > 100 and manifest["counts"]["no_supervised_tokens"] == fills


def test_transformers_encoder_equals_sentencepiece_encoder(alpaca):
    # The builder encodes with SentencePiece when it provably agrees with the tokenizer; the general path
    # (the transformers tokenizer itself) must give the same examples.
    tok = load_tokenizer(str(LLAMA_TOKENIZER))
    add_missing_special_tokens(tok)
    records = [r for r in read_records(ALPACA_DATA)][:2000:3]
    fast = Encoder(tok, str(LLAMA_TOKENIZER / "tokenizer.model"))
    general = Encoder(tok, None)
    assert (fast.backend, general.backend) == ("sentencepiece", "transformers")
    a = tokenize_records(records, Preprocess(fast, 128, "truncate", 0.0, 0))
    b = tokenize_records(records, Preprocess(general, 128, "truncate", 0.0, 0))
    for name in ("ids", "lengths", "masked", "records"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.counts == b.counts and a.counts["truncated"] > 0

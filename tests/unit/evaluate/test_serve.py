"""`alpaca-ds serve` answers the official `openai` client (completions and chat, streaming and not) with what the
model itself generates; `evaluate answer` talks to it as an endpoint; `alpaca-ds chat` streams in a terminal."""

from __future__ import annotations

import json
import subprocess

import openai
import pytest

from alpaca_ds.dataset.template import format_prompt
from alpaca_ds.evaluate.config import DecodingConfig
from helpers.evaluation import Background, cli, make_tiny_model, run_cli
from helpers.paths import ROOT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("serve") / "tiny-run" / "final", seed=3)


@pytest.fixture(scope="module")
def server(tiny):
    with Background(
        "serve",
        "--model",
        str(tiny),
        "--port",
        "0",
        "--set",
        "decoding.max_new_tokens=12",
        ready=r"serving (\S+) on (http://\S+/v1)",
    ) as bg:
        bg.name, bg.url = bg.match.group(1), bg.match.group(2)
        yield bg


@pytest.fixture(scope="module")
def client(server):
    c = openai.OpenAI(base_url=server.url, api_key="not-needed", max_retries=0, timeout=120)
    yield c
    c.close()


def reference(tiny, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding of `prompt` with plain transformers, without the server."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_models_and_completions(server, client, tiny):
    assert [m.id for m in client.models.list().data] == [server.name] == ["tiny-run"]
    prompt = format_prompt("Give three tips for staying healthy.")
    r = client.completions.create(model=server.name, prompt=prompt, max_tokens=8, temperature=0)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].text == reference(tiny, prompt, 8)
    assert r.choices[0].finish_reason in ("length", "stop") and 1 <= r.usage.completion_tokens <= 8
    assert r.usage.prompt_tokens > 20
    # the stream carries the same text, piece by piece, then a finish_reason
    pieces, reasons = [], []
    for chunk in client.completions.create(model=server.name, prompt=prompt, max_tokens=8, temperature=0, stream=True):
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == r.choices[0].text and len([p for p in pieces if p]) >= 2
    assert reasons[-1] == r.choices[0].finish_reason and set(reasons[:-1]) == {None}
    # a batch of prompts and n samples per prompt: indexes as OpenAI numbers them
    many = client.completions.create(
        model=server.name, prompt=[prompt, format_prompt("Say hi.")], max_tokens=3, temperature=0.9, n=2, seed=1
    )
    assert [c.index for c in many.choices] == [0, 1, 2, 3]


def test_chat_completions(server, client, tiny):
    messages = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Name a primary color."}]
    expected = reference(tiny, format_prompt("Name a primary color."), 6)
    r = client.chat.completions.create(model=server.name, messages=messages, max_tokens=6, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == expected
    chunks = list(
        client.chat.completions.create(
            model=server.name,
            messages=messages,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and not chunks[-1].choices


def test_errors_in_openai_shape(server, client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=server.name, prompt="x", max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="no user message"):
        client.chat.completions.create(model=server.name, messages=[{"role": "system", "content": "x"}])


def test_evaluate_answer_through_the_endpoint(server, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"instruction": "Add the numbers.", "input": "2 and 3"},
                {"instruction": "Say hi."},
                {"instruction": "Name a fruit.", "input": ""},
            ]
        )
    )
    out = tmp_path / "outputs.json"
    args = (
        "evaluate",
        "answer",
        "--model",
        server.url,
        "--eval-set",
        str(tasks),
        "--output",
        str(out),
        "--set",
        "decoding.temperature=0",
        "--set",
        "decoding.max_new_tokens=4",
        "--set",
        "api.prompts_per_request=2",
    )
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    records = json.loads(out.read_text())
    assert [list(x) for x in records] == [["dataset", "instruction", "output", "generator"]] * 3
    assert records[0]["instruction"] == "Add the numbers.\n\n2 and 3" and records[0]["generator"] == "tiny-run"
    assert records[0]["dataset"] == "tasks"
    calls = [json.loads(x) for x in (tmp_path / "outputs.json.calls.jsonl").read_text().splitlines()]
    assert sorted(c["t"] for c in calls) == ["result", "result", "send", "send"]  # 3 prompts, 2 per request
    again = run_cli(*args)  # everything is in the call ledger: nothing is asked again
    assert again.returncode == 0 and "(0 generated now, 2 from an earlier run)" in again.stdout


@pytest.mark.slow
def test_terminal_chat_streams(tiny):
    proc = subprocess.run(
        cli("chat", "--model", str(tiny), "--set", "decoding.temperature=0", "--set", "decoding.max_new_tokens=6"),
        input="/input 2 and 3\nAdd the numbers.\n/quit\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = reference(tiny, format_prompt("Add the numbers.", "2 and 3"), 6)
    assert "alpaca-ds chat with tiny-run" in proc.stdout
    assert f">>> {expected}" in proc.stdout
    assert "(input set for the next instruction: 7 characters)" in proc.stdout


def test_stream_yields_pieces_as_generated(tiny):
    from alpaca_ds.evaluate.local import Answer, LocalModel

    model = LocalModel(tiny)
    out = list(model.stream(format_prompt("Say hi."), DecodingConfig(temperature=0, max_new_tokens=10)))
    assert isinstance(out[-1], Answer) and len(out) >= 3
    assert "".join(out[:-1]) == out[-1].text
    # a stop string ends the answer before it, streamed or not
    stop = [out[-1].text[3:5]] if len(out[-1].text) >= 5 else None
    if stop:
        streamed = list(
            model.stream(format_prompt("Say hi."), DecodingConfig(temperature=0, max_new_tokens=10), stop=stop)
        )
        batch = model.generate([format_prompt("Say hi.")], DecodingConfig(temperature=0, max_new_tokens=10), stop=stop)
        assert streamed[-1].text == batch[0].text == out[-1].text[: out[-1].text.find(stop[0])]
        assert streamed[-1].finish_reason == "stop"

"""The feedback demo: in a real headless chromium (ask, watch the answer stream, rate and comment, reload, a
filtered prompt refused politely), its HTTP API refusing malformed requests with 4xx, the summary command
counting what the file holds, and the demo in front of an endpoint (`alpaca-ds serve`) with a moderation
endpoint as its filter. The model is a tiny random LLaMA; its answers are checked against the same model run
directly."""
from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request

import pytest

from alpaca_ds.config import DecodingConfig
from alpaca_ds.dataset.template import format_prompt
from alpaca_ds.evaluate.demo import REFUSAL
from eval_helpers import Background, LoopbackServer, browser, make_tiny_model, needs_browser, run_cli

GREEDY = DecodingConfig(temperature=0, top_p=1, max_new_tokens=16)
READY = r"demo of (\S+): (http://127\.0\.0\.1:\d+/)\?t=(\S+)"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("demo") / "tiny" / "final")


def expected_answer(model, instruction: str, input_: str = "") -> str:
    from alpaca_ds.evaluate.local import LocalModel
    return LocalModel(model).generate([format_prompt(instruction, input_)], GREEDY)[0].text


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def post(base: str, path: str, body, token: str | None) -> tuple[int, str]:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"X-Token": token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@needs_browser
def test_ask_rate_reload_refuse_and_summarize(model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    words = tmp_path / "blocklist.txt"
    words.write_text("# what the demo refuses\nforbidden\nvery bad phrase\n")
    feedback = tmp_path / "demo" / "feedback.jsonl"
    server = Background("demo", "--model", str(model), "--port", "0", "--feedback", str(feedback),
                        "--set", f"filter.words={words}", ready=READY)
    name, base, token = server.match.groups()
    asked = [("Name three colours.", ""), ("Translate this sentence to French.", "Good morning, friends.")]
    expected = [expected_answer(model, *q) for q in asked]
    driver = browser()
    wait = WebDriverWait(driver, 120)
    try:
        driver.get(f"{base}?t={token}")
        wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny · content filter on")
        for field, value in (("temperature", "0"), ("max_new_tokens", "16")):  # the page's decoding settings
            driver.find_element(By.ID, field).clear()
            driver.find_element(By.ID, field).send_keys(value)
        for k, (instruction, input_) in enumerate(asked):
            driver.find_element(By.ID, "instruction").clear()
            driver.find_element(By.ID, "instruction").send_keys(instruction)
            driver.find_element(By.ID, "input").clear()
            driver.find_element(By.ID, "input").send_keys(input_)
            driver.find_element(By.ID, "ask").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card .rate")) == k + 1)  # answer complete
            card = driver.find_element(By.CSS_SELECTOR, ".card")  # the newest is on top
            answer = card.find_element(By.CLASS_NAME, "answer")
            assert answer.get_attribute("textContent") == expected[k]  # the model's own greedy answer
            assert int(answer.get_attribute("data-pieces")) > 1      # it arrived in pieces, as generated
            row = lines(feedback)[-1]
            assert (row["instruction"], row["input"], row["answer"], row["rating"]) == (instruction, input_,
                                                                                          expected[k], None)
            assert row["prompt"] == format_prompt(instruction, input_) and row["model"] == "tiny"
            assert row["decoding"] == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16}
            # rate: the first thumbs down with a comment, the second thumbs up
            before = len(lines(feedback))
            card.find_element(By.CLASS_NAME, "down" if k == 0 else "up").click()
            wait.until(lambda d: len(lines(feedback)) == before + 1)
            wait.until(lambda d: card.find_element(By.CLASS_NAME, "status").text == "saved")
            if k == 0:
                card.find_element(By.CLASS_NAME, "comment").send_keys("Repeats itself.")
                card.find_element(By.CLASS_NAME, "save").click()
                wait.until(lambda d: len(lines(feedback)) == before + 2)
        on_disk = lines(feedback)  # all of it there before the page said "saved": the tab may close now

        driver.refresh()  # the page comes back with this browser's answers and their ratings
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card .rate")) == 2)
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert [c.find_element(By.CLASS_NAME, "answer").get_attribute("textContent") for c in cards] == expected[::-1]
        assert cards[1].find_element(By.CLASS_NAME, "down").get_attribute("aria-pressed") == "true"
        assert cards[1].find_element(By.CLASS_NAME, "comment").get_attribute("value") == "Repeats itself."
        assert cards[0].find_element(By.CLASS_NAME, "up").get_attribute("aria-pressed") == "true"

        driver.find_element(By.ID, "instruction").clear()
        driver.find_element(By.ID, "instruction").send_keys("Tell me something Forbidden.")
        driver.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.find_element(By.ID, "notice").text == REFUSAL)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".card")) == 2  # no answer card for it
    finally:
        driver.quit()
    assert lines(feedback)[:len(on_disk)] == on_disk
    refused = lines(feedback)[-1]
    assert refused["answer"] is None and refused["refused"] == "word list: 'Forbidden'"

    # malformed requests: 4xx with a message, never a traceback
    assert post(base, "api/generate", {"instruction": "x"}, None)[0] == 403
    for body in ("{not json", "[1, 2]", {"input": "no instruction"}, {"instruction": 7},
                 {"instruction": "x", "temperature": 3}, {"instruction": "x", "max_new_tokens": 10 ** 6},
                 {"instruction": "x", "top_p": "high"}):
        status, text = post(base, "api/generate", body, token)
        assert status == 400 and "error" in json.loads(text), (body, status, text)
    assert post(base, "api/feedback", {"id": "nope", "rating": "up"}, token)[0] == 404
    assert post(base, "api/feedback", {"id": on_disk[0]["id"], "rating": "great"}, token)[0] == 400
    assert post(base, "api/feedback", {"id": on_disk[0]["id"]}, token)[0] == 400
    output, errors = server.stop(signal.SIGINT)
    assert "Traceback" not in errors, errors

    # the summary counts what the file holds
    r = run_cli("demo", "summary", str(feedback), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["overall"] == {"answers": 2, "rated": 2, "up": 1, "down": 1, "share_up": 0.5, "comments": 1,
                            "withheld": 0}
    assert s["refused_prompts"] == 1 and s["by_model"]["tiny"]["answers"] == 2
    assert [w["instruction"] for w in s["worst"]] == ["Name three colours."]
    r = run_cli("demo", "summary", str(feedback))
    assert "2 answers, 2 rated: 1 thumbs up, 1 thumbs down (50.0% up); 1 with a comment" in r.stdout
    assert "| Name three colours. |" in r.stdout and "Repeats itself." in r.stdout


class Moderation(LoopbackServer):
    """An OpenAI-compatible /v1/moderations that flags texts containing "violent" and wants a key."""

    def __init__(self):
        self.inputs: list[str] = []

    async def handle(self, request):
        from aiohttp import web
        if request.headers.get("Authorization") != "Bearer mod-key":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        text = (await request.json())["input"]
        self.inputs.append(text)
        flagged = "violent" in text.lower()
        return web.json_response({"id": "modr-1", "model": "omni-moderation-latest", "results": [
            {"flagged": flagged, "categories": {"violence": flagged, "hate": False},
             "category_scores": {"violence": 0.9 if flagged else 0.01, "hate": 0.0}}]})

    def routes(self):
        return [("/v1/moderations", self.handle)]


def test_demo_of_an_endpoint_with_a_moderation_filter(model, tmp_path, monkeypatch):
    monkeypatch.setenv("MOD_KEY", "mod-key")
    feedback = tmp_path / "feedback.jsonl"
    with Moderation() as moderation, \
            Background("serve", "--model", str(model), "--port", "0", ready=r"serving \S+ on (http://\S+/v1)") as api:
        demo = Background("demo", "--model", api.match.group(1), "--port", "0", "--feedback", str(feedback),
                          "--set", f"filter.moderation_url={moderation.url}", "--set", "filter.api_key_env=MOD_KEY",
                          ready=READY)
        name, base, token = demo.match.groups()
        assert name == "tiny"  # the endpoint's /v1/models
        status, text = post(base, "api/generate", {"instruction": "Name three colours.", "temperature": 0,
                                                   "max_new_tokens": 16}, token)
        events = [json.loads(x) for x in text.splitlines()]
        assert status == 200 and [e["type"] for e in events][0] == "start" and events[-1]["type"] == "done"
        answer = "".join(e["text"] for e in events if e["type"] == "text")
        assert answer == expected_answer(model, "Name three colours.") and len(events) > 3
        status, text = post(base, "api/generate", {"instruction": "Write something violent."}, token)
        assert [json.loads(x) for x in text.splitlines()] == [{"type": "refused", "message": REFUSAL}]
        output, errors = demo.stop(signal.SIGINT)
    assert moderation.inputs == ["Name three colours.\n\n", answer, "Write something violent.\n\n"]
    rows = lines(feedback)
    assert rows[0]["answer"] == answer and rows[0]["withheld"] is None and rows[0]["model"] == "tiny"
    assert rows[1]["refused"] == "moderation: violence"
    assert "Traceback" not in errors, errors

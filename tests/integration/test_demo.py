"""The feedback demo: in a real headless chromium (ask, watch the answer stream, rate and comment, reload, a
filtered prompt refused politely), its HTTP API refusing malformed requests with 4xx, the summary command
counting what the file holds, and the demo in front of an endpoint (`alpaca-ds serve`) with a moderation
endpoint as its filter. The model is a tiny random LLaMA; its answers are checked against the same model run
directly."""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request

import pytest

from alpaca_ds.dataset.template import format_prompt
from alpaca_ds.evaluate.config import DecodingConfig
from alpaca_ds.evaluate.demo import REFUSAL
from helpers.evaluation import Background, browser, make_tiny_model, needs_browser, run_cli, simulator

pytestmark = pytest.mark.slow

GREEDY = DecodingConfig(temperature=0, top_p=1, max_new_tokens=16)
READY = r"demo of (\S+): (http://127\.0\.0\.1:\d+/)\?t=(\S+)"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("demo") / "tiny" / "final")


def expected_answer(model, instruction: str, input_: str = "", seed: int | None = None) -> str:
    """The model's answer run directly: greedy, or sampled at temperature 1 with `seed`."""
    from alpaca_ds.evaluate.local import LocalModel

    decoding = GREEDY if seed is None else GREEDY.model_copy(update={"temperature": 1.0})
    return LocalModel(model).generate([format_prompt(instruction, input_)], decoding, seed=seed)[0].text


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


def stop_at_the_end(request, server: Background) -> None:
    """A failing test leaves no server behind (a passing one stops it itself, to read its output)."""
    request.addfinalizer(lambda: server.proc.poll() is None and server.stop())


@needs_browser
def test_ask_rate_reload_refuse_and_summarize(model, tmp_path, request):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    words = tmp_path / "blocklist.txt"
    words.write_text("# what the demo refuses\nforbidden\nvery bad phrase\n")
    feedback = tmp_path / "demo" / "feedback.jsonl"
    server = Background(
        "demo",
        "--model",
        str(model),
        "--port",
        "0",
        "--feedback",
        str(feedback),
        "--set",
        f"filter.words={words}",
        ready=READY,
    )
    stop_at_the_end(request, server)
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
            wait.until(lambda d, k=k: len(d.find_elements(By.CSS_SELECTOR, ".card .rate")) == k + 1)  # answer complete
            card = driver.find_element(By.CSS_SELECTOR, ".card")  # the newest is on top
            answer = card.find_element(By.CLASS_NAME, "answer")
            assert answer.get_attribute("textContent") == expected[k]  # the model's own greedy answer
            assert int(answer.get_attribute("data-pieces")) > 1  # it arrived in pieces, as generated
            row = lines(feedback)[-1]
            assert (row["instruction"], row["input"], row["answer"], row["rating"]) == (
                instruction,
                input_,
                expected[k],
                None,
            )
            assert row["prompt"] == format_prompt(instruction, input_) and row["model"] == "tiny"
            assert row["decoding"] == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16}
            # rate: the first thumbs down with a comment, the second thumbs up
            before = len(lines(feedback))
            card.find_element(By.CLASS_NAME, "down" if k == 0 else "up").click()
            wait.until(lambda d, n=before + 1: len(lines(feedback)) == n)
            wait.until(lambda d, card=card: card.find_element(By.CLASS_NAME, "status").text == "saved")
            if k == 0:
                card.find_element(By.CLASS_NAME, "comment").send_keys("Repeats itself.")
                card.find_element(By.CLASS_NAME, "save").click()
                wait.until(lambda d, n=before + 2: len(lines(feedback)) == n)
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
    assert lines(feedback)[: len(on_disk)] == on_disk
    refused = lines(feedback)[-1]
    assert refused["answer"] is None and refused["refused"] == "word list: 'Forbidden'"

    # malformed requests: 4xx with a message, never a traceback
    assert post(base, "api/generate", {"instruction": "x"}, None)[0] == 403
    for body in (
        "{not json",
        "[1, 2]",
        {"input": "no instruction"},
        {"instruction": 7},
        {"instruction": "x", "temperature": 3},
        {"instruction": "x", "max_new_tokens": 10**6},
        {"instruction": "x", "top_p": "high"},
    ):
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
    assert s["overall"] == {"answers": 2, "rated": 2, "up": 1, "down": 1, "share_up": 0.5, "comments": 1, "withheld": 0}
    assert s["refused_prompts"] == 1 and s["by_model"]["tiny"]["answers"] == 2
    assert [w["instruction"] for w in s["worst"]] == ["Name three colours."]
    r = run_cli("demo", "summary", str(feedback))
    assert "2 answers, 2 rated: 1 thumbs up, 1 thumbs down (50.0% up); 1 with a comment" in r.stdout
    assert "| Name three colours. |" in r.stdout and "Repeats itself." in r.stdout


def word_only_in(text: str, *others: str) -> str:
    """A whole word of `text` that none of `others` holds (case-insensitive)."""
    for w in re.findall(r"(?<!\w)[A-Za-z]{3,}(?!\w)", text):
        if not any(re.search(rf"(?<!\w){w}(?!\w)", o, re.IGNORECASE) for o in others):
            return w
    raise AssertionError(f"no word of {text!r} is missing from the others")


def test_demo_of_an_endpoint_with_a_moderation_filter(model, tmp_path, monkeypatch, request):
    """In front of `alpaca-ds serve`, the moderation endpoint (the simulator's /v1/moderations, which wants its
    key) refuses a prompt and withholds an answer it flags; the word list withholds an answer as it streams, before
    the listed word is sent."""
    asked = ["Name three colours.", "Describe a sunny day.", "List two fruits."]
    # sampled with a seed each: a random model's greedy answers hardly depend on the prompt
    answers = [expected_answer(model, q, seed=seed) for seed, q in enumerate(asked, start=1)]
    flagged = word_only_in(answers[1], *asked, answers[0], answers[2])  # the moderation endpoint flags it
    listed = word_only_in(answers[2], *asked, answers[0], answers[1])  # the word list holds it
    words = tmp_path / "words.txt"
    words.write_text(listed + "\n")
    monkeypatch.setenv("MOD_KEY", "mod-key")
    feedback = tmp_path / "feedback.jsonl"
    with (
        simulator(require_key="mod-key", moderation_words=("violent", flagged)) as moderation,
        Background("serve", "--model", str(model), "--port", "0", ready=r"serving \S+ on (http://\S+/v1)") as api,
    ):
        demo = Background(
            "demo",
            "--model",
            api.match.group(1),
            "--port",
            "0",
            "--feedback",
            str(feedback),
            "--set",
            f"filter.moderation_url={moderation.base_url}",
            "--set",
            "filter.api_key_env=MOD_KEY",
            "--set",
            f"filter.words={words}",
            ready=READY,
        )
        stop_at_the_end(request, demo)
        name, base, token = demo.match.groups()
        assert name == "tiny"  # the endpoint's /v1/models
        streams = []
        for seed, instruction in [(1, asked[0]), (0, "Write something violent."), (2, asked[1]), (3, asked[2])]:
            status, text = post(
                base,
                "api/generate",
                {"instruction": instruction, "temperature": 1.0, "seed": seed, "max_new_tokens": 16},
                token,
            )
            assert status == 200
            streams.append([json.loads(x) for x in text.splitlines()])
        output, errors = demo.stop(signal.SIGINT)
    shown = ["".join(e["text"] for e in events if e["type"] == "text") for events in streams]
    assert [e["type"] for e in streams[0]][0] == "start" and streams[0][-1]["type"] == "done"
    assert shown[0] == answers[0] and len(streams[0]) > 3  # the endpoint's streamed answer: the model's own
    assert streams[1] == [{"type": "refused", "message": REFUSAL}]
    assert shown[2] == answers[1] and streams[2][-1]["type"] == "withheld"  # judged once complete
    assert streams[3][-1]["type"] == "withheld" and listed not in shown[3] and answers[2].startswith(shown[3])
    assert moderation.sim.moderation.inputs == [
        asked[0] + "\n\n",
        answers[0],
        "Write something violent.\n\n",
        asked[1] + "\n\n",
        answers[1],
        asked[2] + "\n\n",
    ]
    assert moderation.sim.keys == {"Bearer mod-key"}
    rows = lines(feedback)
    assert rows[0]["answer"] == answers[0] and rows[0]["withheld"] is None and rows[0]["model"] == "tiny"
    assert rows[0]["decoding"] == {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 16, "seed": 1}
    assert rows[1]["refused"] == "moderation: violence" and rows[2]["withheld"] == "moderation: violence"
    assert rows[3]["withheld"] == f"word list: {listed!r}"
    assert "Traceback" not in errors, errors
    s = json.loads(run_cli("demo", "summary", str(feedback), "--json").stdout)
    assert (s["overall"]["answers"], s["overall"]["withheld"], s["refused_prompts"]) == (3, 2, 1)


def test_the_simulators_moderations_speak_openais_protocol():
    """What the demo's filter is tested against: /v1/moderations through the official client, a string or a list
    of inputs, one result each; the key required; a malformed request refused with 400."""
    import openai

    with simulator(require_key="mod-key", moderation_words=("forbidden", "very bad phrase")) as s:
        client = openai.OpenAI(base_url=s.base_url, api_key="mod-key", max_retries=0)
        one = client.moderations.create(input="Nothing FORBIDDEN here.")
        many = client.moderations.create(
            input=["fine", "a very bad phrase indeed", "forbiddenness"], model="omni-moderation-latest"
        )
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.base_url, api_key="wrong", max_retries=0).moderations.create(input="x")
        with pytest.raises(openai.BadRequestError):
            client.moderations.create(input=[1, 2])
    assert one.results[0].flagged and one.results[0].categories.violence
    assert one.results[0].category_scores.violence > one.results[0].category_scores.hate
    assert [r.flagged for r in many.results] == [False, True, False]  # whole words only
    assert many.model == "omni-moderation-latest" and many.id.startswith("modr-")
    assert s.sim.moderation.inputs == ["Nothing FORBIDDEN here.", "fine", "a very bad phrase indeed", "forbiddenness"]

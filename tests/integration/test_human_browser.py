"""The human A/B page in a real headless browser (Debian's chromium driven by Selenium through chromedriver):
click through items, close the browser half way, come back, finish with the keyboard; every judgment is on disk
as soon as the page moves on, and the same win-rate report reads the file."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request

import pytest

from helpers.evaluation import Background, browser, needs_browser, run_cli, write_outputs

pytestmark = [pytest.mark.slow, needs_browser]


def wait_progress(driver, done: int, total: int):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "progress").text == f"{done} / {total} judged")


def shown(driver) -> dict:
    from selenium.webdriver.common.by import By

    return {
        k: driver.find_element(By.ID, i).text
        for k, i in (("instruction", "instruction"), ("a", "answer-a"), ("b", "answer-b"))
    }


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_rater_clicks_through_closes_the_tab_and_finishes(tmp_path):
    from selenium.webdriver.common.by import By

    n = 6
    outputs_1 = [
        {
            "dataset": "selfinstruct" if i < 3 else "koala",
            "instruction": f"Instruction {i}: <b>bold?</b>",
            "output": f"first model's answer {i}",
            "generator": "model-one",
        }
        for i in range(n)
    ]
    outputs_2 = [
        {
            "dataset": r["dataset"],
            "instruction": r["instruction"],
            "output": f"second model's answer {i}",
            "generator": "model-two",
        }
        for i, r in enumerate(outputs_1)
    ]
    a = write_outputs(tmp_path / "a.json", outputs_1)
    b = write_outputs(tmp_path / "b.json", outputs_2)
    out = tmp_path / "human" / "judgments.jsonl"
    server = Background(
        "evaluate",
        "human",
        "--a",
        str(a),
        "--b",
        str(b),
        "--out",
        str(out),
        "--port",
        "0",
        "--rater",
        "tester",
        ready=r"human A/B page: (http://127\.0\.0\.1:\d+/)\?t=(\S+)",
    )
    base, token = server.match.group(1), server.match.group(2)
    url = f"{base}?t={token}"
    # the API refuses a request without the page's token (another site open in the browser cannot post)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "api/state")
    assert e.value.code == 403

    plan = {0: "A", 1: "B", 2: "tie", 3: "A"}
    expected = {}
    driver = browser()
    try:
        driver.get(url)
        wait_progress(driver, 0, n)
        for k, choice in plan.items():
            seen = shown(driver)
            assert seen["instruction"] == outputs_1[k]["instruction"]  # shown as text, never as HTML
            assert {seen["a"], seen["b"]} == {outputs_1[k]["output"], outputs_2[k]["output"]}
            assert "model-one" not in driver.page_source and "model-two" not in driver.page_source  # anonymised
            a_is_2 = seen["a"] == outputs_2[k]["output"]
            expected[k] = 0 if choice == "tie" else (2 if (choice == "A") == a_is_2 else 1)
            driver.find_element(By.ID, {"A": "pick-a", "B": "pick-b", "tie": "pick-tie"}[choice]).click()
            wait_progress(driver, k + 1, n)
            assert len(lines(out)) == k + 1  # on disk before the page moved on
    finally:
        driver.quit()  # the rater closes the browser half way through

    driver = browser()
    try:
        driver.get(url)
        wait_progress(driver, 4, n)  # nothing lost; the page continues with the first item not judged
        for k in (4, 5):
            seen = shown(driver)
            assert seen["instruction"] == outputs_1[k]["instruction"]
            expected[k] = 2 if seen["b"] == outputs_2[k]["output"] else 1
            driver.find_element(By.TAG_NAME, "body").send_keys("b")  # keyboard: B is better
            wait_progress(driver, k + 1, n)
        done = driver.find_element(By.ID, "done")
        assert done.is_displayed() and not driver.find_element(By.ID, "judging").is_displayed()
        summary = driver.find_element(By.ID, "summary").text
        rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#report tbody tr")]
    finally:
        driver.quit()
    output, _ = server.stop(signal.SIGINT)
    assert "6/6 judged" in output

    judged = lines(out)
    assert [j["item"] for j in judged] == list(range(n))
    assert [j["preference"] for j in judged] == [expected[k] for k in range(n)]
    assert {j["shown_as_a"] for j in judged} == {1, 2}  # the order really is drawn per item
    assert all(j["rater"] == "tester" and j["generator_2"] == "model-two" for j in judged)
    wins = sum(p == 2 for p in expected.values()) + 0.5 * sum(p == 0 for p in expected.values())
    assert summary == f"Win rate of output 2 over output 1: {100 * wins / n:.1f}% over {n} items."
    assert rows[0].startswith(f"all {n} ") and {r.split()[0] for r in rows[1:]} == {"koala", "selfinstruct"}
    # the same report as any annotations file
    r = run_cli("evaluate", "winrate", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out.parent / "winrate.json").read_text())
    assert rep["overall"]["win_rate"] == pytest.approx(100 * wins / n)
    assert rep["overall"]["n_total"] == n and rep["generator_2"] == "model-two"

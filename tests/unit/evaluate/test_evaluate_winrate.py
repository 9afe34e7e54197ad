"""`alpaca-ds evaluate winrate` reproduces AlpacaEval's arithmetic on annotations whose win rate is worked out by
hand here: discrete preferences (1 / 2 / 0 or 1.5 for a tie), float preferences in [1, 2], dropped values, and
the per-dataset breakdown."""

from __future__ import annotations

import json
import math

import pytest

from alpaca_ds.common.errors import UserError
from alpaca_ds.evaluate import winrate
from alpaca_ds.evaluate.config import WinrateConfig
from helpers.evaluation import run_cli


def annotation(pref, dataset="d", **extra):
    # the keys of AlpacaEval's published annotations.json files, extra ones included
    return {
        "instruction": f"task {id(extra)}",
        "output_1": "x",
        "generator_1": "text_davinci_003",
        "dataset": dataset,
        "output_2": "y",
        "generator_2": "my-model",
        "annotator": "weighted_alpaca_eval_gpt4_turbo",
        "preference": pref,
        "price_per_example": 0.001,
        "time_per_example": 1.2,
        "raw_completion": None,
        **extra,
    }


def test_discrete_preferences_by_hand():
    # 4 wins of output_2, 2 losses, 2 ties (one written 0, one 1.5), one without a preference
    prefs = [2, 2, 2, 1, 0, 2, 1, 1.5, None]
    r = winrate.head2head(prefs)
    assert r["win_rate"] == pytest.approx(100 * (4 + 0.5 * 2) / 8)  # (wins + ½ ties) / n = 62.5
    # scores 1,1,1,1 / 0,0 / .5,.5: mean .625, squared deviations 4 x .140625 + 2 x .390625 + 2 x .015625 = 1.375
    assert r["standard_error"] == pytest.approx(100 * math.sqrt(1.375 / 7 / 8))  # sample sd / sqrt(n)
    assert r["discrete_win_rate"] == pytest.approx(62.5)
    assert (r["n_wins"], r["n_wins_base"], r["n_draws"], r["n_total"], r["n_dropped"]) == (4, 2, 2, 8, 1)


def test_float_preferences_by_hand():
    prefs = [1.9, 1.2, 1.5, 1.75, 1.0, 2.0, 3.0, float("nan"), "n/a"]  # the last three are not preferences
    r = winrate.head2head(prefs)
    # mean(preference - 1) over the six valid: (.9 + .2 + .5 + .75 + 0 + 1) / 6
    assert r["win_rate"] == pytest.approx(100 * 3.35 / 6)
    mean = 3.35 / 6
    sd = math.sqrt(sum((x - mean) ** 2 for x in (0.9, 0.2, 0.5, 0.75, 0, 1)) / 5)
    assert r["standard_error"] == pytest.approx(100 * sd / math.sqrt(6))
    # rounded: 2, 1, tie, 2, 1, 2 -> (3 + ½) / 6
    assert r["discrete_win_rate"] == pytest.approx(100 * 3.5 / 6)
    assert (r["n_wins"], r["n_wins_base"], r["n_draws"], r["n_total"], r["n_dropped"]) == (3, 2, 1, 6, 3)


def test_degenerate_cases():
    assert winrate.head2head([2])["standard_error"] is None  # one value has no spread
    r = winrate.head2head([None, None])
    assert r["win_rate"] is None and r["n_total"] == 0 and r["n_dropped"] == 2


def test_report_by_dataset_and_cli(tmp_path):
    rows = (
        [annotation(2, "koala") for _ in range(3)]
        + [annotation(1, "koala")]
        + [annotation(1.5, "selfinstruct"), annotation(0, "selfinstruct"), annotation(2, "selfinstruct")]
    )
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows))
    r = run_cli("evaluate", "winrate", str(path), "--out", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "report" / "winrate.json").read_text())
    assert rep["overall"]["win_rate"] == pytest.approx(100 * (4 + 0.5 * 2) / 7)
    assert rep["by_dataset"]["koala"]["win_rate"] == pytest.approx(75.0)
    assert rep["by_dataset"]["selfinstruct"]["win_rate"] == pytest.approx(100 * 2 / 3)
    assert (rep["generator_1"], rep["generator_2"]) == ("text_davinci_003", "my-model")
    assert "# Win rate of my-model over text_davinci_003" in r.stdout
    assert "| koala | 4 | 75.00 |" in r.stdout
    assert (tmp_path / "report" / "winrate.md").read_text() == r.stdout


def test_jsonl_being_written_and_bad_files(tmp_path):
    path = tmp_path / "judgments.jsonl"
    path.write_text(json.dumps(annotation(2)) + "\n" + json.dumps(annotation(0)) + "\n" + '{"instruction": "tor')
    assert winrate.read_annotations(path)[1]["preference"] == 0  # a torn last line (a write in progress) is skipped
    assert winrate.run(WinrateConfig(annotations=str(path))).report["overall"]["win_rate"] == pytest.approx(75.0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "output_1": "a", "output_2": "b"}]))
    with pytest.raises(UserError, match=r"record 0: no 'preference' key"):
        winrate.read_annotations(bad)
    with pytest.raises(UserError, match="cannot read annotations: No such file"):
        winrate.read_annotations(tmp_path / "missing.json")

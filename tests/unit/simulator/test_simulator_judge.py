"""The simulator's judge mode, which the quickstart judges with: deterministic, blind to the order of the outputs,
and answering `evaluate judge` over a real socket."""

from __future__ import annotations

import json

from alpaca_ds.config import load_config
from alpaca_ds.evaluate.config import JudgeConfig
from alpaca_ds.simulator.judge import judge_verdict
from helpers.paths import ROOT


def _judge_prompt(instruction: str, a: str, b: str) -> str:
    from alpaca_ds.evaluate.judge import load_template, render

    return render(load_template(None), instruction, a, b)


def test_simulator_judge_mode_is_deterministic_and_position_blind():
    vocab = ["bread", "names", "bakery", "Loaf", "crust"]
    good, bad = "The Patient Loaf, Crust and Crumb: names for a bakery.", "xq zz ko"
    instruction = "Suggest three names for a bakery"
    assert judge_verdict(_judge_prompt(instruction, good, bad), vocab) == "Output (a)"
    assert judge_verdict(_judge_prompt(instruction, bad, good), vocab) == "Output (b)"
    assert judge_verdict(_judge_prompt(instruction, good, good), vocab) == "Output (a)"  # a tie over both orders
    assert judge_verdict("Come up with a series of tasks:\n\n1. Instruction: x", vocab) is None


def test_simulator_answers_judge_calls_through_evaluate_judge(tmp_path):
    from alpaca_ds.evaluate import judge
    from alpaca_ds.simulator.local import LocalSimulator

    a = [
        {"instruction": f"Name a colour number {i}", "output": "Red is a colour.", "generator": "ref"} for i in range(3)
    ]
    b = [{"instruction": f"Name a colour number {i}", "output": "qq", "generator": "model"} for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    with LocalSimulator(ROOT / "seeds" / "seed_tasks.jsonl") as teacher:
        cfg = load_config(
            JudgeConfig,
            None,
            [
                f"a={tmp_path / 'a.json'}",
                f"b={tmp_path / 'b.json'}",
                f"out_dir={tmp_path / 'j'}",
                f"api.base_url={teacher.base_url}",
                "api.api_key_env=null",
                "progress=false",
                "mode=discrete",
            ],
        )
        result = judge.run(cfg)
    assert result.exit_code == 0 and result.no_verdict_replies == 0
    assert result.report["overall"]["win_rate"] == 0.0  # "colour" overlaps the instruction only in a's answers

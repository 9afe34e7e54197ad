"""Eval sets, answers from a local exported model (all 252 self-instruct tasks, in the reference's keys and order),
resuming after a crash, the reference outputs, errors that say what to change, and what evaluate imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config
from alpaca_ds.dataset.template import PROMPT_DICT
from alpaca_ds.evaluate import answers
from alpaca_ds.evaluate.config import AnswerConfig
from alpaca_ds.evaluate.eval_sets import load_eval_set, pair_outputs, reference_outputs
from helpers.evaluation import make_tiny_model, run_cli, write_outputs
from helpers.paths import DAVINCI, ROOT, SHARED, needs_eval_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("answer") / "tiny-run" / "final")


@needs_eval_data
def test_named_eval_sets_match_alpaca_eval():
    si = load_eval_set("selfinstruct", SHARED)
    ae = load_eval_set("alpaca_eval", SHARED)
    assert len(si) == 252 and len(ae) == 805
    reference = [r for r in json.loads(DAVINCI.read_text()) if r["dataset"] == "selfinstruct"]
    assert [(i.dataset, i.instruction) for i in si] == [(r["dataset"], r["instruction"]) for r in reference]
    # the prompt keeps instruction and input apart, in Alpaca's input template
    task = si[1]
    assert task.input.startswith("Hi Jen") and task.instruction == f"{task.prompt_instruction}\n\n{task.input}"
    assert task.alpaca_prompt() == PROMPT_DICT["prompt_input"].format(
        instruction=task.prompt_instruction, input=task.input
    )
    assert ae[0].alpaca_prompt() == PROMPT_DICT["prompt_no_input"].format(instruction=ae[0].instruction)
    assert reference_outputs("selfinstruct", SHARED) == reference


@needs_eval_data
@pytest.mark.slow
def test_tiny_model_answers_all_252_selfinstruct_tasks(tiny, tmp_path):
    out = tmp_path / "outputs.json"
    r = run_cli(
        "evaluate",
        "answer",
        "--model",
        str(tiny),
        "--eval-set",
        "selfinstruct",
        "--output",
        str(out),
        "--set",
        f"data_dir={SHARED}",
        "--set",
        "decoding.max_new_tokens=4",
        "--set",
        "batch_size=64",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote" in r.stdout and "252 answers by tiny-run" in r.stdout
    assert "answer tiny-run" in r.stderr and "252/252" in r.stderr  # the progress bar
    ours = json.loads(out.read_text())
    reference = [x for x in json.loads(DAVINCI.read_text()) if x["dataset"] == "selfinstruct"]
    assert len(ours) == 252
    assert [list(x) for x in ours] == [list(x) for x in reference]  # exactly the keys, in their order
    assert [(x["dataset"], x["instruction"]) for x in ours] == [(x["dataset"], x["instruction"]) for x in reference]
    assert {x["generator"] for x in ours} == {"tiny-run"} and all(isinstance(x["output"], str) for x in ours)
    assert sum(bool(x["output"]) for x in ours) > 200
    assert not (tmp_path / "outputs.json.partial.jsonl").exists()
    # the file pairs with the reference for judging, as AlpacaEval merges them
    for pairs in (pair_outputs(out, DAVINCI), pair_outputs(DAVINCI, out)):  # either way round: the 252
        assert [p.instruction for p in pairs] == [x["instruction"] for x in reference]
    assert pairs[0].generator_1 == "text_davinci_003" and pairs[0].generator_2 == "tiny-run"


def _tasks(tmp_path, n=12):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"instruction": f"Write word number {i}.", "input": "x" * (i % 3)} for i in range(n)]))
    return path


def test_a_crashed_run_continues_from_its_partial_file(tiny, tmp_path, monkeypatch):
    from alpaca_ds.evaluate.local import LocalModel

    cfg = load_config(
        AnswerConfig,
        None,
        [
            f"model={tiny}",
            f"eval_set={_tasks(tmp_path)}",
            "batch_size=4",
            f"output={tmp_path / 'o.json'}",
            "decoding.max_new_tokens=3",
            "progress=false",
        ],
    )
    real = LocalModel.generate
    calls = []

    def crash_on_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill in the middle of the run
        return real(self, *a, **k)

    monkeypatch.setattr(LocalModel, "generate", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        answers.run(cfg)
    partial = tmp_path / "o.json.partial.jsonl"
    saved = {e["i"]: e["output"] for e in map(json.loads, partial.read_text().splitlines()[1:])}
    assert len(saved) == 8 and not (tmp_path / "o.json").exists()
    monkeypatch.setattr(LocalModel, "generate", real)
    result = answers.run(cfg)
    assert (result.answered_now, result.resumed) == (4, 8)
    outputs = json.loads((tmp_path / "o.json").read_text())
    assert all(outputs[i]["output"] == text for i, text in saved.items())
    assert outputs[1]["instruction"] == "Write word number 1.\n\nx" and outputs[0]["dataset"] == "tasks"
    # another model (or other decoding) is never mixed into an unfinished file
    partial.write_text(
        partial.read_text()
        if partial.exists()
        else json.dumps({"t": "header", "fingerprint": {"model": "elsewhere"}}) + "\n"
    )
    with pytest.raises(UserError, match="other settings"):
        answers.run(cfg)


def test_errors_name_what_to_change(tiny, tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        answers.run(load_config(AnswerConfig, None, [f"model={tmp_path}", f"eval_set={_tasks(tmp_path)}"]))
    with pytest.raises(UserError, match=r"eval set 'selfinstruct': .*nowhere.*user_oriented_instructions.jsonl not"):
        answers.run(load_config(AnswerConfig, None, [f"model={tiny}", f"data_dir={tmp_path / 'nowhere'}"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok"}\n{"input": "no instruction"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: key 'instruction' is missing"):
        answers.run(load_config(AnswerConfig, None, [f"model={tiny}", f"eval_set={bad}"]))
    with pytest.raises(UserError, match="set exactly one of model"):
        load_config(AnswerConfig, None, [f"model={tiny}", "api.base_url=http://127.0.0.1:1/v1"])
    r = run_cli("evaluate", "answer", "--model", str(tiny), "--set", "decoding.temprature=0")
    assert r.returncode == 2 and "did you mean 'decoding.temperature'" in r.stderr


@needs_eval_data
def test_reference_command(tmp_path):
    r = run_cli(
        "evaluate",
        "reference",
        "--eval-set",
        "selfinstruct",
        "--data-dir",
        str(SHARED),
        "--output",
        str(tmp_path / "ref.json"),
    )
    assert r.returncode == 0, r.stderr
    assert "252 outputs by text_davinci_003" in r.stdout
    assert json.loads((tmp_path / "ref.json").read_text()) == reference_outputs("selfinstruct", SHARED)


def test_pairing_follows_a_and_matches_b_by_instruction(tmp_path):
    a = write_outputs(
        tmp_path / "a.json",
        [{"instruction": f"i{k}", "output": f"a{k}", "generator": "A", "dataset": "d"} for k in range(3)],
    )
    b = write_outputs(
        tmp_path / "b.json", [{"instruction": f"i{k}", "output": f"b{k}", "generator": "B"} for k in (2, 1, 0, 9)]
    )
    pairs = pair_outputs(a, b)
    assert [(p.instruction, p.output_1, p.output_2, p.dataset) for p in pairs] == [
        ("i0", "a0", "b0", "d"),
        ("i1", "a1", "b1", "d"),
        ("i2", "a2", "b2", "d"),
    ]
    assert [p.instruction for p in pair_outputs(b, a)] == ["i2", "i1", "i0"]  # B holds more: fine
    c = write_outputs(tmp_path / "c.json", [{"instruction": k, "output": "c"} for k in ("i0", "other")])
    with pytest.raises(UserError, match="answer different instructions: 1 in common, 2 only in the first, 1 only"):
        pair_outputs(a, c)


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("alpaca_ds.evaluate.answers", {"deepspeed", "torch"}),  # torch only once a local model is loaded
        ("alpaca_ds.evaluate.judge", {"deepspeed", "torch", "transformers"}),
        ("alpaca_ds.evaluate.winrate", {"deepspeed", "torch", "transformers"}),
        ("alpaca_ds.evaluate.human", {"deepspeed", "torch", "transformers"}),
        ("alpaca_ds.evaluate.serve", {"deepspeed", "torch"}),
        ("alpaca_ds.evaluate.chat", {"deepspeed", "torch"}),
    ],
)
def test_evaluate_imports(module, forbidden):
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = {m.split(".")[0] for m in out.stdout.split()}
    assert not forbidden & loaded
    # one-way: evaluate reaches other stages only through dataset.template and generate
    stages = {m for m in out.stdout.split() if m.startswith("alpaca_ds.")}
    assert not {m for m in stages if m.startswith(("alpaca_ds.train", "alpaca_ds.cli"))}
    assert not {m for m in stages if m.startswith("alpaca_ds.dataset.") and m != "alpaca_ds.dataset.template"}

"""Cards and the release folder from a real, quickstart-sized chain: the teacher simulator -> generate -> data build
-> train (ZeRO-3, 2 CPU ranks) -> evaluate answer -> judge -> release card / pack. Every number the cards show is
checked against the run's own files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config
from alpaca_ds.evaluate import judge
from alpaca_ds.evaluate.config import JudgeConfig
from alpaca_ds.release.cards import pack, write_cards
from helpers.evaluation import simulator, write_outputs
from helpers.generation import Teacher, cli_env
from helpers.paths import ROOT
from helpers.training import launch

pytestmark = pytest.mark.slow


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "alpaca_ds.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("chain")
    gen, data, runs = root / "generated", root / "tokenized", root / "run"
    with Teacher() as teacher:
        run(
            "generate",
            "--config",
            "launch/recipes/self_instruct_local.yaml",
            "--set",
            f"out_dir={gen}",
            "--set",
            f"api.base_url={teacher.url}",
            "--set",
            "num_instructions=120",
            "--set",
            "progress=false",
        )
    run("data", "build", "--set", f"input={gen / 'regen.json'}", "--set", f"output={data}", "--set", "workers=1")
    result = launch(f"output_dir={runs}", f"data.path={data}", "optim.max_steps=4")
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = root / "tasks.jsonl"
    records = json.loads((gen / "regen.json").read_text())[:6]
    tasks.write_text(
        "".join(json.dumps({"instruction": r["instruction"], "input": r["input"]}) + "\n" for r in records)
    )
    ours = root / "ours" / "model_outputs.json"
    run(
        "evaluate",
        "answer",
        "--model",
        str(runs / "final"),
        "--eval-set",
        str(tasks),
        "--output",
        str(ours),
        "--set",
        "decoding.max_new_tokens=8",
    )
    answers = json.loads(ours.read_text())
    reference = write_outputs(
        root / "reference.json",
        [{**a, "output": r["output"], "generator": "teacher"} for a, r in zip(answers, records)],
    )
    with simulator() as s:
        cfg = load_config(
            JudgeConfig,
            None,
            [
                f"a={reference}",
                f"b={ours}",
                f"out_dir={root / 'judged'}",
                f"api.base_url={s.base_url}",
                "api.model=judge-sim",
                "api.api_key_env=null",
                "api.encoding=cl100k_base",
                "budget.prompt_usd_per_1m=1",
                "budget.completion_usd_per_1m=1",
                "budget.max_usd=1",
                "progress=false",
            ],
        )
        assert judge.run(cfg).exit_code == 0
    return {"root": root, "gen": gen, "data": data, "run": runs, "winrate": root / "judged" / "winrate.json"}


def test_cards_name_the_runs_real_numbers(chain, tmp_path):
    write_cards(chain["run"], tmp_path, [chain["winrate"]])
    model, data = (tmp_path / "MODEL_CARD.md").read_text(), (tmp_path / "DATA_CARD.md").read_text()
    run_json = json.loads((chain["gen"] / "run.json").read_text())
    cost = json.loads((chain["gen"] / "cost.json").read_text())
    stats = json.loads((chain["gen"] / "stats.json").read_text())
    manifest_bytes = (chain["data"] / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    metrics = [json.loads(line) for line in (chain["run"] / "metrics.jsonl").read_text().splitlines()]
    report = json.loads(chain["winrate"].read_text())
    fp = run_json["fingerprint"]
    # generation: teacher, prompt template hash, seed set hash, counts, cost
    for text in (
        fp["api"]["model"],
        fp["prompt_template_sha256"],
        fp["seed_tasks_sha256"],
        f"{stats['accepted']:,} instructions accepted",
        f"${cost['spent_usd']:.4f}",
    ):
        assert text in data, text
    for reason, count in stats["candidates"]["rejected"].items():
        assert f"{reason} {count:,}" in data
    # dataset and training: the manifest's hash, counts, steps, losses
    assert hashlib.sha256(manifest_bytes).hexdigest() in model
    assert f"{manifest['counts']['examples']:,} examples" in model
    losses = [r for r in metrics if "loss" in r]
    assert f"{losses[-1]['step']} optimizer steps" in model and f"{losses[-1]['loss']:.4f}" in model
    # evaluation: the win rate of this model (output_2) and the weights it judged
    o = report["overall"]
    assert f"{o['win_rate']:.2f}% ± {o['standard_error']:.2f}" in model and f"over {o['n_total']} pairs" in model
    assert report["provenance"]["output_2"]["model_sha256"] in model
    assert "generated by gpt-3.5-turbo-instruct" in model and "terms of use" in model
    assert "- dataset manifest unchanged since training: yes" in model


def test_broken_links_are_reported_or_refused(chain, tmp_path):
    with pytest.raises(UserError, match="did not judge this run's weights"):
        other = json.loads(chain["winrate"].read_text())
        other["provenance"]["output_2"]["model_sha256"] = "0" * 64
        (tmp_path / "other.json").write_text(json.dumps(other))
        write_cards(chain["run"], tmp_path, [tmp_path / "other.json"])
    with pytest.raises(UserError, match="no provenance.json"):
        write_cards(chain["data"], tmp_path)


def test_pack_has_everything_with_checksums(chain, tmp_path):
    out = tmp_path / "release"
    pack(chain["run"], out, None, True, [chain["winrate"]])
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "MODEL_CARD.md",
        "DATA_CARD.md",
        "SHA256SUMS",
        "model/model.safetensors",
        "tokenizer/tokenizer.json",
        "data/regen.json",
        "configs/config.resolved.yaml",
        "configs/dataset-manifest.json",
        "configs/generation-run.json",
        "configs/provenance.json",
    } <= files
    sums = dict(reversed(line.split("  ", 1)) for line in (out / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == files - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    with pytest.raises(UserError, match="--base BASE .* or --full-weights"):
        pack(chain["run"], tmp_path / "again", None, False)

"""Pairwise judging by a model behind an OpenAI-compatible API, with AlpacaEval's annotation format.

    alpaca-ds evaluate judge --a eval/text_davinci_003/selfinstruct/model_outputs.json \
                             --b eval/tiny/selfinstruct/model_outputs.json
    alpaca-ds evaluate judge --config launch/recipes/eval_judge_openai.yaml --a A.json --b B.json \
                             --set budget.max_usd=2

For each instruction the judge sees the two answers as "Output (a)" and "Output (b)" (prompt:
alpaca_ds/evaluate/judge_prompt.txt, or `prompt_template`) and must reply "Output (a)" or "Output (b)". It is
asked twice, once in each order, to cancel position bias: the preference is the mean of the two verdicts
mapped to the original outputs -- 1 (both prefer --a), 2 (both prefer --b) or 1.5 (they disagree: a tie). A
reply that names neither (or both) counts as no verdict; a pair with one verdict takes it, a pair with none
gets preference null (dropped by the win rate, counted as such).

Calls go through the API layer (alpaca_ds/api: client, rate limiter, hard budget reserving a call's worst case
before it is sent), online or, with api.transport: batch, through the Batch API at its lower price. Every call is
kept in OUT/calls.jsonl, fsync'd as it is sent and as it returns. That ledger is the cache: a rerun (after a
kill, an interrupt or the budget stopping it) pays only for calls not yet answered, and the budget counts
everything OUT has ever spent. A run that stops still writes every pair whose verdicts it has.

Writes OUT/annotations.json (AlpacaEval's shape: instruction, output_1, output_2, generator_1, generator_2,
dataset, annotator, preference, plus raw_completion), OUT/cost.json and the win-rate report OUT/winrate.md +
winrate.json. Exit status: 0 all pairs judged, 3 budget, 4 some calls failed all retries (their pairs are left
out; a rerun asks again), 5 key/model refused, 130 interrupted.
"""
from __future__ import annotations

import asyncio
import json
import re
from importlib import resources
from pathlib import Path

from alpaca_ds.api.client import api_key
from alpaca_ds.api.ledger import CallLedger
from alpaca_ds.api.progress import Progress
from alpaca_ds.api.runner import Runner
from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_json
from alpaca_ds.common.lock import exclusive
from alpaca_ds.config import JudgeConfig
from alpaca_ds.evaluate.eval_sets import Pair, pair_outputs
from alpaca_ds.evaluate import winrate
from alpaca_ds.evaluate.answers import provenance_path

PLACEHOLDERS = ("instruction", "output_a", "output_b")
_VERDICT = re.compile(r"output\s*\(?\s*([ab])\s*\)?", re.IGNORECASE)


def load_template(path: str | None) -> str:
    source = Path(path) if path else Path(str(resources.files("alpaca_ds.evaluate") / "judge_prompt.txt"))
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{source}: cannot read the judge prompt (prompt_template): {e.strerror or e}") from None
    missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in text]
    if missing:
        raise UserError(f"{source}: the judge prompt must contain {', '.join('{' + p + '}' for p in missing)}")
    return text


def render(template: str, instruction: str, output_a: str, output_b: str) -> str:
    values = {"instruction": instruction, "output_a": output_a, "output_b": output_b}
    # one pass, so a placeholder written inside an answer is left as it is
    return re.sub(r"\{(instruction|output_a|output_b)\}", lambda m: values[m.group(1)], template)


def parse_verdict(text: str) -> str | None:
    """'a' or 'b' when the reply names exactly one of "Output (a)" / "Output (b)", else None."""
    found = {m.group(1).lower() for m in _VERDICT.finditer(text or "")}
    return found.pop() if len(found) == 1 else None


def combine(verdicts: list[str | None]) -> float | int | None:
    """Verdicts in the orders asked ((a)=output_1 first, then (a)=output_2) -> an AlpacaEval preference."""
    prefs = []
    for order, v in enumerate(verdicts):
        if v is None:
            continue
        first = 1 if order == 0 else 2     # which original output was shown as (a)
        prefs.append(first if v == "a" else 3 - first)
    if not prefs:
        return None
    mean = sum(prefs) / len(prefs)
    return int(mean) if mean in (1.0, 2.0) else mean


def default_out_dir(pairs: list[Pair]) -> Path:
    def safe(s: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:60] or "model"
    return Path("eval") / "judge" / f"{safe(pairs[0].generator_2)}-vs-{safe(pairs[0].generator_1)}"


class Judge:
    def __init__(self, cfg: JudgeConfig, cancel_batches: bool = False):
        self.cfg = cfg
        self.cancel_batches = cancel_batches
        self.pairs = pair_outputs(cfg.a, cfg.b, cfg.limit)
        self.template = load_template(cfg.prompt_template)
        self.out = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(self.pairs)
        self.key = api_key(cfg.api)
        self.orders = 2 if cfg.both_orders else 1

    def prompt(self, pair: Pair, order: int) -> str:
        a, b = (pair.output_1, pair.output_2) if order == 0 else (pair.output_2, pair.output_1)
        return render(self.template, pair.instruction, a, b)

    def run(self) -> dict:
        lock = exclusive(self.out, "alpaca-ds evaluate judge")
        try:
            ledger = CallLedger(self.out / "calls.jsonl", "k")
            jobs = [(p.index, o) for p in self.pairs for o in range(self.orders)]
            progress = Progress(len(jobs), "judge", "call", enabled=self.cfg.progress)
            replies: dict[tuple[int, int], str] = {}
            try:
                runner = Runner(self.cfg.api, self.key, ledger, self.cfg.budget, progress=progress)

                def prompts_of(job):
                    return [self.prompt(self.pairs[job[0]], job[1])]

                def on_answer(job, choices):
                    replies[job] = choices[0]["text"]
                    progress.update(1, f"${runner.budget.spent_usd:.4f} of ${self.cfg.budget.max_usd:g}")

                asyncio.run(self._main(runner, jobs, prompts_of, on_answer))
            finally:
                progress.close()
                ledger.close()
            return self._write(runner, replies)
        finally:
            lock.release()

    async def _main(self, runner: Runner, jobs: list, prompts_of, on_answer) -> None:
        if self.cfg.api.transport == "batch":
            from alpaca_ds.api.batch import run_keyed
            await run_keyed(runner, jobs, prompts_of, on_answer, cancel=self.cancel_batches,
                            metadata={"alpaca_ds": "evaluate judge", "out_dir": str(self.out)})
            return
        async with runner:
            await runner.map(jobs, prompts_of, on_answer, self.cfg.concurrency, give_up=True)

    def _write(self, runner, replies: dict) -> dict:
        annotations = []
        no_verdict = 0
        annotator = f"alpaca-ds judge ({self.cfg.api.model}, {'both orders' if self.orders == 2 else 'one order'})"
        for p in self.pairs:
            # what this run was told, else what the ledger holds (a run that stopped early did not ask for it)
            texts = [replies.get((p.index, o)) or _text(runner.answered([self.prompt(p, o)]))
                     for o in range(self.orders)]
            if any(t is None for t in texts):
                continue  # not (fully) judged yet: a rerun completes it
            verdicts = [parse_verdict(t) for t in texts]
            no_verdict += sum(v is None for v in verdicts)
            annotations.append({**p.annotation(), "annotator": annotator, "preference": combine(verdicts),
                                "verdicts": verdicts, "raw_completion": texts})
        atomic_write_json(self.out / "annotations.json", annotations)
        cost = {**runner.cost_report(), "this_run": {"calls": runner.calls, "from_ledger": runner.cached}}
        atomic_write_json(self.out / "cost.json", cost)
        rep = winrate.report(annotations, str(self.out / "annotations.json")) if annotations else None
        if rep is not None:
            # which models (by weights hash) the two outputs came from, when `evaluate answer` wrote them
            rep["provenance"] = {side: json.loads(p.read_text()) if (p := provenance_path(Path(f))).is_file() else None
                                 for side, f in (("output_1", self.cfg.a), ("output_2", self.cfg.b))}
            winrate.write_report(rep, self.out)
        return {"out_dir": str(self.out), "pairs": len(self.pairs), "judged": len(annotations),
                "no_verdict_replies": no_verdict, "calls": runner.calls, "from_ledger": runner.cached,
                "interrupted_before": runner.ledger.interrupted, "cost": cost, "report": rep,
                "stop_reason": runner.stop_reason, "message": runner.message, "exit_code": runner.exit_code}


def _text(choices: list[dict] | None) -> str | None:
    return choices[0]["text"] if choices else None


def run(cfg: JudgeConfig, cancel_batches: bool = False) -> dict:
    return Judge(cfg, cancel_batches).run()

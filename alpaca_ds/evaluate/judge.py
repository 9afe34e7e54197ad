"""Pairwise judging by a model behind an OpenAI-compatible API, with AlpacaEval's annotation format.

    alpaca-ds evaluate judge --a eval/text_davinci_003/selfinstruct/model_outputs.json \
                             --b eval/tiny/selfinstruct/model_outputs.json
    alpaca-ds evaluate judge --config launch/recipes/eval_judge_openai.yaml --a A.json --b B.json \
                             --set budget.max_usd=2

Each instruction is judged twice, once with each output shown first, to cancel position bias; each call gives
P(the output shown second is better), and the preference is the mean of the two mapped back to the original
outputs (1 + P from the order showing --a first, 2 - P from the other): 1 means --a is better, 2 --b.

mode weighted (the default, as AlpacaEval 2.0's weighted_alpaca_eval_* annotators): the prompt
(judge_prompt_weighted.txt) shows the outputs as "Output (m)" and "Output (M)" and asks for the identifier of the
better one, AlpacaEval's tokens: "m" names the output shown first, "M" the second (case-sensitive). One token is
asked for (max_tokens 1) with its top-5 log-probabilities (chat: logprobs + top_logprobs 5; completions: logprobs
5), and P = P(M) / (P(m) + P(M)) over the first token (a token missing from the top 5 counts as probability 0),
so the preference is 1 + P(M)/(P(m)+P(M)) as AlpacaEval's logprob_parser gives it. Where the API returns no
log-probabilities, or neither m nor M is among the top 5, the reply's text is read as a discrete verdict instead
("m" 0, "M" 1); each annotation says which (`preference_source`: logprobs, verdict, or mixed across its two
calls) and the report counts the calls that fell back.

mode discrete: the prompt (judge_prompt.txt) asks for "Output (a)" or "Output (b)"; P is 0 or 1, so the
preference is 1, 2, or 1.5 where the two orders disagree (a tie). A reply that names neither (or both) counts as
no verdict; a pair with one verdict takes it, a pair with none gets preference null (dropped by the win rate,
counted as such).

Calls go through the API layer (alpaca_ds/api: client, rate limiter, hard budget reserving a call's worst case
before it is sent), online or, with api.transport: batch, through the Batch API at its lower price. Every call is
kept in OUT/calls.jsonl, fsync'd as it is sent and as it returns, log-probabilities included. That ledger is the
cache: a rerun (after a kill, an interrupt or the budget stopping it) pays only for calls not yet answered, and the
budget counts everything OUT has ever spent. A run that stops still writes every pair whose replies it has.

Writes OUT/annotations.json (AlpacaEval's shape: instruction, output_1, output_2, generator_1, generator_2,
dataset, annotator, preference, plus raw_completion), OUT/cost.json and the win-rate report, raw and
length-controlled, OUT/winrate.md + winrate.json. Exit status: 0 all pairs judged, 3 budget, 4 some calls failed
all retries (their pairs are left out; a rerun asks again), 5 key/model refused, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from alpaca_ds.api.client import api_key
from alpaca_ds.api.ledger import CallLedger
from alpaca_ds.api.progress import Progress
from alpaca_ds.api.runner import Runner
from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_json
from alpaca_ds.common.lock import exclusive
from alpaca_ds.evaluate import winrate
from alpaca_ds.evaluate.answers import provenance_path
from alpaca_ds.evaluate.config import JudgeConfig
from alpaca_ds.evaluate.eval_sets import Pair, pair_outputs

PLACEHOLDERS = ("instruction", "output_a", "output_b")
_VERDICT = re.compile(r"output\s*\(?\s*([ab])\s*\)?", re.IGNORECASE)
FIRST, SECOND = "m", "M"  # AlpacaEval's weighted annotators' identifiers: shown first, shown second
TOP_LOGPROBS = 5
PROMPTS = {"weighted": "judge_prompt_weighted.txt", "discrete": "judge_prompt.txt"}


def load_template(path: str | None, mode: str = "discrete") -> str:
    source = Path(path) if path else Path(str(resources.files("alpaca_ds.evaluate") / PROMPTS[mode]))
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


def second_share(top_logprobs: list[dict[str, float]] | None) -> float | None:
    """P(M) / (P(m) + P(M)) over the reply's first token, from its top log-probabilities; None when there are none
    or neither token is among them (one of the two missing counts as probability 0, as in AlpacaEval)."""
    first = top_logprobs[0] if top_logprobs else {}
    if SECOND not in first:
        return 0.0 if FIRST in first else None
    if FIRST not in first:
        return 1.0
    return 1 / (1 + math.exp(max(-700.0, min(700.0, first[FIRST] - first[SECOND]))))


def combine(shares: list[float | None]) -> float | int | None:
    """P(the output shown second is better) in the orders asked (output_1 shown first, then output_2 first; None:
    no verdict) -> an AlpacaEval preference."""
    prefs = [1 + s if order == 0 else 2 - s for order, s in enumerate(shares) if s is not None]
    if not prefs:
        return None
    mean = sum(prefs) / len(prefs)
    return int(mean) if mean in (1.0, 2.0) else mean


def default_out_dir(pairs: list[Pair]) -> Path:
    def safe(s: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:60] or "model"

    return Path("eval") / "judge" / f"{safe(pairs[0].generator_2)}-vs-{safe(pairs[0].generator_1)}"


@dataclass(frozen=True)
class JudgeResult:
    out_dir: str
    pairs: int
    judged: int
    no_verdict_replies: int
    judge: dict  # {mode, calls_by_source, no_verdict}
    calls: int  # answered by the API in this run
    from_ledger: int
    interrupted_before: int
    cost: dict  # cost.json's content
    report: dict | None  # winrate.json's content; None when no pair is judged
    stop_reason: str | None
    message: str
    max_usd: float  # the budget
    exit_code: int  # 0 all pairs judged, 3 budget, 4 failed calls, 5 key/model refused, 130 interrupted

    def summary(self) -> str:
        line = (
            f"{self.judged}/{self.pairs} pairs judged in {self.out_dir} (annotations.json, winrate.md); "
            f"{self.calls} calls now, {self.from_ledger} from the ledger; spent ${self.cost['spent_usd']:.4f} "
            f"of ${self.max_usd:g}"
        )
        if self.report is not None:
            o = self.report["overall"]
            wr = "n/a" if o["win_rate"] is None else f"{o['win_rate']:.2f}%"
            se = "n/a" if o["standard_error"] is None else f"{o['standard_error']:.2f}"
            line += f"; win rate of {self.report['generator_2']}: {wr} ± {se}"
            lc = self.report["length_controlled"]
            line += f", length-controlled {lc['win_rate']:.2f}%" if "win_rate" in lc else f" (no LC: {lc['skipped']})"
        calls = self.judge["calls_by_source"]
        if self.judge["mode"] == "weighted" and calls.get("verdict"):
            line += (
                f"; {calls['verdict']} of {sum(calls.values())} calls had no log-probabilities for m/M and fell "
                "back to the verdict"
            )
        return line


class Judge:
    def __init__(self, cfg: JudgeConfig, cancel_batches: bool = False):
        self.cfg = cfg
        self.cancel_batches = cancel_batches
        self.pairs = pair_outputs(cfg.a, cfg.b, cfg.limit)
        self.template = load_template(cfg.prompt_template, cfg.mode)
        self.out = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(self.pairs)
        self.key = api_key(cfg.api)
        self.orders = 2 if cfg.both_orders else 1
        self.weighted = cfg.mode == "weighted"
        # what is asked of the API: one token and its log-probabilities, in weighted mode
        self.api = cfg.api.model_copy(update={"max_tokens": 1, "logprobs": TOP_LOGPROBS}) if self.weighted else cfg.api

    def prompt(self, pair: Pair, order: int) -> str:
        a, b = (pair.output_1, pair.output_2) if order == 0 else (pair.output_2, pair.output_1)
        return render(self.template, pair.instruction, a, b)

    def run(self) -> JudgeResult:
        lock = exclusive(self.out, "alpaca-ds evaluate judge")
        try:
            ledger = CallLedger(self.out / "calls.jsonl", "k")
            jobs = [(p.index, o) for p in self.pairs for o in range(self.orders)]
            progress = Progress(len(jobs), "judge", "call", enabled=self.cfg.progress)
            replies: dict[tuple[int, int], dict] = {}
            try:
                runner = Runner(self.api, self.key, ledger, self.cfg.budget, progress=progress)

                def prompts_of(job):
                    return [self.prompt(self.pairs[job[0]], job[1])]

                def on_answer(job, choices):
                    replies[job] = choices[0]
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
            from alpaca_ds.api.batch_waves import run_keyed

            await run_keyed(
                runner,
                jobs,
                prompts_of,
                on_answer,
                cancel=self.cancel_batches,
                metadata={"alpaca_ds": "evaluate judge", "out_dir": str(self.out)},
            )
            return
        async with runner:
            await runner.map(jobs, prompts_of, on_answer, self.cfg.concurrency, give_up=True)

    def read(self, choice: dict) -> tuple[float | None, str]:
        """P(the output shown second is better) from one reply (None: no verdict), and what it was read from."""
        if self.weighted:
            share = second_share(choice.get("top_logprobs"))
            if share is not None:
                return share, "logprobs"
            return {FIRST: 0.0, SECOND: 1.0}.get(choice["text"].strip()), "verdict"
        verdict = parse_verdict(choice["text"])
        return (None if verdict is None else float(verdict == "b")), "verdict"

    def annotator(self) -> str:
        orders = "both orders" if self.orders == 2 else "one order"
        return f"alpaca-ds judge ({self.api.model}, {self.cfg.mode}, {orders})"

    def _write(self, runner, replies: dict) -> JudgeResult:
        annotations = []
        sources: Counter = Counter()  # calls by what their preference was read from
        no_verdict = 0
        for p in self.pairs:
            # what this run was told, else what the ledger holds (a run that stopped early did not ask for it)
            choices = [
                replies.get((p.index, o)) or _first(runner.answered([self.prompt(p, o)])) for o in range(self.orders)
            ]
            if any(c is None for c in choices):
                continue  # not (fully) judged yet: a rerun completes it
            shares, read_from = zip(*(self.read(c) for c in choices))
            no_verdict += sum(s is None for s in shares)
            sources.update(read_from)
            entry = {**p.annotation(), "annotator": self.annotator(), "preference": combine(list(shares))}
            if self.weighted:
                entry["preference_source"] = read_from[0] if len(set(read_from)) == 1 else "mixed"
                entry["p_second"] = list(shares)  # per order: P(the output shown second is better)
                entry["top_logprobs"] = [c["top_logprobs"][0] if c.get("top_logprobs") else None for c in choices]
            else:
                entry["verdicts"] = [None if s is None else "ab"[int(s)] for s in shares]
            annotations.append({**entry, "raw_completion": [c["text"] for c in choices]})
        atomic_write_json(self.out / "annotations.json", annotations)
        cost = {**runner.cost_report(), "this_run": {"calls": runner.calls, "from_ledger": runner.cached}}
        atomic_write_json(self.out / "cost.json", cost)
        judged_by = {"mode": self.cfg.mode, "calls_by_source": dict(sources), "no_verdict": no_verdict}
        rep = winrate.with_length_control(annotations, str(self.out / "annotations.json")) if annotations else None
        if rep is not None:
            rep["judge"] = judged_by
            # which models (by weights hash) the two outputs came from, when `evaluate answer` wrote them
            rep["provenance"] = {
                side: json.loads(p.read_text()) if (p := provenance_path(Path(f))).is_file() else None
                for side, f in (("output_1", self.cfg.a), ("output_2", self.cfg.b))
            }
            winrate.write_report(rep, self.out)
        return JudgeResult(
            out_dir=str(self.out),
            pairs=len(self.pairs),
            judged=len(annotations),
            no_verdict_replies=no_verdict,
            judge=judged_by,
            calls=runner.calls,
            from_ledger=runner.cached,
            interrupted_before=runner.ledger.interrupted,
            cost=cost,
            report=rep,
            stop_reason=runner.stop_reason,
            message=runner.message,
            max_usd=self.cfg.budget.max_usd,
            exit_code=runner.exit_code,
        )


def _first(choices: list[dict] | None) -> dict | None:
    return choices[0] if choices else None


def run(cfg: JudgeConfig, cancel_batches: bool = False) -> JudgeResult:
    return Judge(cfg, cancel_batches).run()

"""A model's answers to an eval set, in AlpacaEval's model_outputs.json shape.

    alpaca-ds evaluate answer --model runs/tiny/final --eval-set selfinstruct
    alpaca-ds evaluate answer --model http://127.0.0.1:8000/v1 --eval-set alpaca_eval   # alpaca-ds serve, vLLM
    alpaca-ds evaluate answer --model runs/alpaca-7b/final --eval-set my_tasks.jsonl --set decoding.temperature=0

Each item's prompt is Alpaca's template (the input variant when the task has an input). A local model answers
in batches (prompts sorted by length so a batch pads little); an endpoint in completions mode gets the same
prompts, several per request, in chat mode the instruction (and input) as one user message. The output lists
{dataset, instruction, output, generator} in the eval set's order, written atomically at the end.

Nothing is lost on a crash: a local run appends each finished batch to OUTPUT.partial.jsonl (fsync) and a rerun
continues from it; an endpoint run keeps every call in OUTPUT.calls.jsonl (the call ledger, which is also a
cache: a rerun pays only for what is missing, and a budget holds over all reruns).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from alpaca_ds.api.config import ApiConfig
from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_bytes, atomic_write_json, sha256_file
from alpaca_ds.common.provenance import weights_sha256
from alpaca_ds.evaluate.config import AnswerConfig
from alpaca_ds.evaluate.eval_sets import EvalItem, load_eval_set, output_record


def default_output(generator: str, eval_set: str) -> Path:
    set_name = eval_set if "/" not in eval_set and "." not in eval_set else Path(eval_set).stem
    return Path("eval") / _safe(generator) / _safe(set_name) / "model_outputs.json"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def write_outputs(path: Path, records: list[dict], model: str | None = None, cfg: AnswerConfig | None = None) -> None:
    """The outputs, and beside them (OUTPUT.provenance.json) the model's identity they came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # AlpacaEval writes its outputs with indent 4 and ensure_ascii=False; the same here, so diffs stay small
    atomic_write_bytes(path, (json.dumps(records, indent=4, ensure_ascii=False) + "\n").encode("utf-8"))
    if cfg is not None:
        atomic_write_json(
            provenance_path(path),
            {
                "model": model,
                "model_sha256": weights_sha256(model) if model else None,
                "eval_set": cfg.eval_set,
                "answers": len(records),
                "decoding": cfg.decoding.model_dump(mode="json"),
                "outputs_sha256": sha256_file(path),
            },
        )


def provenance_path(outputs: Path) -> Path:
    return outputs.with_name(outputs.stem + ".provenance.json")


@dataclass(frozen=True)
class AnswerResult:
    output: str  # the model_outputs.json written
    answers: int
    generator: str
    answered_now: int
    resumed: int  # answers from an earlier run (its partial file, or the call ledger)
    prompts_truncated: int = 0
    cost: dict | None = None  # an endpoint's spend (its cost report)
    exit_code: int = 0

    def summary(self) -> str:
        note = f"; {self.prompts_truncated} prompts cut to fit the model" if self.prompts_truncated else ""
        return (
            f"wrote {self.output}: {self.answers} answers by {self.generator} "
            f"({self.answered_now} generated now, {self.resumed} from an earlier run{note})"
        )


def run(cfg: AnswerConfig) -> AnswerResult:
    items = load_eval_set(cfg.eval_set, cfg.data_dir)
    if cfg.limit:
        items = items[: cfg.limit]
    if cfg.api is not None:
        return _run_endpoint(cfg, items)
    return _run_local(cfg, items)


def _bar(cfg: AnswerConfig, total: int, initial: int, desc: str):
    from alpaca_ds.api.progress import Progress

    return Progress(total, desc, "answer", initial=initial, enabled=cfg.progress)


# --------------------------------------------------------------------------------------------------------------
# A local exported folder


def _run_local(cfg: AnswerConfig, items: list[EvalItem]) -> AnswerResult:
    from alpaca_ds.evaluate.local import LocalModel, check_folder, model_name

    check_folder(cfg.model)
    generator = cfg.generator or model_name(cfg.model)
    output = Path(cfg.output) if cfg.output else default_output(generator, cfg.eval_set)
    partial = output.with_name(output.name + ".partial.jsonl")
    fingerprint = {
        "model": str(Path(cfg.model).expanduser().resolve()),
        "weights": _weights_stamp(cfg.model),
        "instructions": hashlib.sha256("\0".join(i.instruction for i in items).encode()).hexdigest(),
        "decoding": cfg.decoding.model_dump(),
        "generator": generator,
    }
    done = _read_partial(partial, fingerprint)
    todo = [i for i in range(len(items)) if i not in done]
    model = LocalModel(cfg.model, cfg.dtype, cfg.device) if todo else None
    truncated = 0
    if todo:
        output.parent.mkdir(parents=True, exist_ok=True)
        new = not partial.exists()
        with open(partial, "ab") as f, _bar(cfg, len(items), len(done), f"answer {generator}") as bar:
            if new:
                _append(f, {"t": "header", "fingerprint": fingerprint})
            prompts = {i: items[i].alpaca_prompt() for i in todo}
            # longest first: similar lengths share a batch (little padding), and memory trouble shows at once
            order = sorted(todo, key=lambda i: -len(model.tokenizer(prompts[i])["input_ids"]))
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                answers = model.generate(
                    [prompts[i] for i in batch], cfg.decoding, seed=cfg.decoding.seed + start, strip=True
                )
                lines = []
                for i, a in zip(batch, answers):
                    done[i] = a.text
                    truncated += a.prompt_truncated
                    lines.append(
                        {
                            "i": i,
                            "output": a.text,
                            "finish_reason": a.finish_reason,
                            "completion_tokens": a.completion_tokens,
                        }
                    )
                _append(f, *lines)
                bar.update(len(batch))
    records = [output_record(item, done[i], generator) for i, item in enumerate(items)]
    write_outputs(output, records, str(Path(cfg.model).expanduser().resolve()), cfg)
    partial.unlink(missing_ok=True)
    return AnswerResult(str(output), len(records), generator, len(todo), len(items) - len(todo), truncated)


def _weights_stamp(folder: str) -> str:
    """Size and mtime of the weight files: a changed model is not silently mixed with old answers."""
    parts = []
    for p in sorted(Path(folder).expanduser().glob("*.safetensors")) + sorted(Path(folder).expanduser().glob("*.bin")):
        st = p.stat()
        parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _append(f, *objs: dict) -> None:
    f.write(b"".join((json.dumps(o, ensure_ascii=False) + "\n").encode("utf-8") for o in objs))
    f.flush()
    os.fsync(f.fileno())


def _read_partial(path: Path, fingerprint: dict) -> dict[int, str]:
    if not path.exists():
        return {}
    from alpaca_ds.common.journal import read_jsonl

    entries, good = read_jsonl(path)
    if good < path.stat().st_size:  # a line torn by a kill: cut it before appending
        with open(path, "r+b") as f:
            f.truncate(good)
    if not entries or entries[0].get("t") != "header":
        path.unlink()
        return {}
    if entries[0]["fingerprint"] != fingerprint:
        old = entries[0]["fingerprint"]
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise UserError(
            f"{path}: answers of an unfinished run with other settings ({', '.join(diff)}). Rerun with "
            "the same settings to continue it, or delete this file to start over."
        )
    return {e["i"]: e["output"] for e in entries[1:]}


# --------------------------------------------------------------------------------------------------------------
# An OpenAI-compatible endpoint


def endpoint_api(cfg: AnswerConfig, model: str) -> ApiConfig:
    """The generator's ApiConfig for the endpoint, with the eval's decoding settings."""
    e, d = cfg.api, cfg.decoding
    return ApiConfig(
        base_url=e.base_url,
        model=model,
        mode=e.mode,
        api_key_env=e.api_key_env,
        encoding=e.encoding,
        n=1,
        max_tokens=d.max_new_tokens,
        temperature=d.temperature,
        top_p=d.top_p,
        ban_end_of_text=False,
        timeout_s=e.timeout_s,
        max_retries=e.max_retries,
        backoff_initial_s=e.backoff_initial_s,
        backoff_max_s=e.backoff_max_s,
        requests_per_minute=e.requests_per_minute,
        tokens_per_minute=e.tokens_per_minute,
    )


async def served_model(base_url: str, key: str | None, timeout: float = 30.0) -> str:
    """The model an endpoint serves (the first of /v1/models), for `api.model: null`."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=key or "no-key", max_retries=2, timeout=timeout)
    try:
        models = await client.models.list()
        names = [m.id for m in models.data]
    except Exception as e:  # noqa: BLE001 - any failure means the same: say which setting to give
        detail = str(e).replace(key, "***") if key else str(e)
        raise UserError(
            f"api.base_url {base_url}: cannot list its models ({type(e).__name__}: {detail[:200]}); "
            "is the server up? Set api.model to skip this question"
        ) from None
    finally:
        await client.close()
    if not names:
        raise UserError(f"api.base_url {base_url}: /v1/models lists no model; set api.model")
    return names[0]


def _run_endpoint(cfg: AnswerConfig, items: list[EvalItem]) -> AnswerResult:
    from alpaca_ds.api.client import api_key
    from alpaca_ds.api.ledger import CallLedger
    from alpaca_ds.api.runner import Runner

    key = api_key(cfg.api)
    model = cfg.api.model or asyncio.run(served_model(cfg.api.base_url, key))
    api = endpoint_api(cfg, model)
    generator = cfg.generator or model
    output = Path(cfg.output) if cfg.output else default_output(generator, cfg.eval_set)
    output.parent.mkdir(parents=True, exist_ok=True)
    ledger = CallLedger(output.with_name(output.name + ".calls.jsonl"), "k")
    chat = api.mode == "chat"
    per = 1 if chat else cfg.api.prompts_per_request
    prompts = [item.instruction if chat else item.alpaca_prompt() for item in items]
    groups = [tuple(range(s, min(s + per, len(items)))) for s in range(0, len(items), per)]
    answers: dict[int, str] = {}
    progress = _bar(cfg, len(items), 0, f"answer {generator}")

    def on_answer(group, choices):
        for c in choices:
            answers[group[c["prompt"]]] = c["text"].strip()
        progress.update(len(group))

    async def main(runner: Runner):
        async with runner:
            await runner.map(groups, lambda g: [prompts[i] for i in g], on_answer, cfg.api.concurrency)

    try:
        runner = Runner(api, key, ledger, cfg.budget, progress=progress)
        asyncio.run(main(runner))
    finally:
        progress.close()
        ledger.close()
    cost = {**runner.cost_report(), "this_run": {"calls": runner.calls, "from_ledger": runner.cached}}
    if runner.stopping or len(answers) < len(items):
        why = runner.message if runner.stopping else "some answers are missing"
        raise UserError(
            f"answers stopped with {len(answers)}/{len(items)} done: {why}. "
            f"Rerun the same command to continue ({ledger.path} keeps every answered call)."
        )
    records = [output_record(item, answers[i], generator) for i, item in enumerate(items)]
    write_outputs(output, records, cfg.model, cfg)
    return AnswerResult(str(output), len(records), generator, runner.calls, runner.cached, cost=cost)

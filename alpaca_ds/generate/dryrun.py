"""`alpaca-ds generate --dry-run`: what the target will cost, online and through the Batch API, counted on the
real prompts; no request is sent.

    alpaca-ds generate --config launch/recipes/self_instruct_openai.yaml --dry-run
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from alpaca_ds.generate.config import GenerateConfig
from alpaca_ds.generate.setup import prepare


def expected_per_request(cfg: GenerateConfig, prompts_per_request: int, accept_rate: float | None = None) -> float:
    """Accepted instructions one request is expected to bring: the tasks it asks for x the share kept (before a
    run has measured it, expected_accept_rate: Alpaca kept ~25%)."""
    tasks_per_prompt = cfg.num_tasks - cfg.num_prompt_instructions - 1  # generation stops when task num_tasks begins
    rate = cfg.expected_accept_rate if accept_rate is None else accept_rate
    return tasks_per_prompt * prompts_per_request * cfg.api.n * rate


def dry_run(cfg: GenerateConfig) -> dict:
    setup = prepare(cfg, need_key=False)
    k, per_req = cfg.num_prompt_instructions, setup.prompts_per_request
    tasks_per_prompt = cfg.num_tasks - k - 1  # generation stops when task num_tasks begins
    accept_rate, source = cfg.expected_accept_rate, "expected_accept_rate (a prior)"
    stats_path = Path(cfg.out_dir) / "stats.json"
    if stats_path.exists():
        try:
            st = json.loads(stats_path.read_text())
            if st["candidates"]["parsed"] >= 50 and st["accepted"] > 0:
                accept_rate = st["accepted"] / st["candidates"]["parsed"]
                source = f"measured in {cfg.out_dir}"
        except (ValueError, KeyError, TypeError):
            pass
    per_request = expected_per_request(cfg, per_req, accept_rate)
    requests = math.ceil(cfg.num_instructions / per_request)
    if cfg.max_requests is not None:
        requests = min(requests, cfg.max_requests)
    prompt_tokens = 0
    for i in range(requests):
        prompt_tokens += setup.prompt_tokens(setup.prompts(i))
    # completion length: what the seed tasks look like when written in the response format
    enc = setup.enc
    block_tokens = [
        len(
            enc.encode(
                f"###\n4. Instruction: {e.instruction}\n4. Input:\n{e.input or '<noinput>'}\n4. Output:\n{e.output}\n",
                disallowed_special=(),
            )
        )
        for e in setup.seeds
    ]
    per_task = sum(block_tokens) / len(block_tokens)
    completions = requests * per_req * cfg.api.n
    completion_expected = int(completions * min(cfg.api.max_tokens, per_task * tasks_per_prompt))
    completion_worst = completions * cfg.api.max_tokens
    price = setup.price
    expected_usd = price.cost(prompt_tokens, completion_expected)
    worst_usd = price.cost(prompt_tokens, completion_worst)
    batch = price.batch()
    return {
        "model": cfg.api.model,
        "mode": cfg.api.mode,
        "encoding": setup.encoding_name,
        "base_url": cfg.api.base_url,
        "target": cfg.num_instructions,
        "accept_rate": accept_rate,
        "accept_rate_source": source,
        "tasks_per_prompt": tasks_per_prompt,
        "requests": requests,
        "prompts": requests * per_req,
        "prompt_tokens": prompt_tokens,
        "completion_tokens_expected": completion_expected,
        "completion_tokens_worst": completion_worst,
        "tokens_per_task": per_task,
        "expected_usd": expected_usd,
        "worst_usd": worst_usd,
        "batch_expected_usd": batch.cost(prompt_tokens, completion_expected),
        "batch_worst_usd": batch.cost(prompt_tokens, completion_worst),
        "transport": cfg.api.transport,
        "accepted_per_request": per_request,
        "price": {
            "prompt_usd_per_1m": price.prompt_usd_per_1m,
            "completion_usd_per_1m": price.completion_usd_per_1m,
            "source": price.source,
        },
        "batch_price": {
            "prompt_usd_per_1m": batch.prompt_usd_per_1m,
            "completion_usd_per_1m": batch.completion_usd_per_1m,
            "source": batch.source,
        },
        "budget_usd": cfg.budget.max_usd,
        "budget_tokens": cfg.budget.max_tokens,
        # at the transport's price: what the budget holds per request until it is answered
        "worst_request_usd": setup.worst_case(
            setup.prompt_tokens(setup.prompts(0)), per_req, price.for_transport(cfg.api.transport)
        ).usd,
    }


def format_dry_run(d: dict) -> str:
    lines = [
        f"dry run: {d['model']} ({d['mode']}, tiktoken {d['encoding']}) at {d['base_url']}; no request is sent",
        f"target: {d['target']:,} instructions; {d['tasks_per_prompt']} tasks per prompt, "
        f"{d['accept_rate']:.0%} kept ({d['accept_rate_source']})",
        f"requests: {d['requests']:,} ({d['prompts']:,} prompts)",
        f"prompt tokens: {d['prompt_tokens']:,} (tiktoken, over the real prompts)",
        f"completion tokens: ~{d['completion_tokens_expected']:,} expected "
        f"(~{d['tokens_per_task']:.0f} per task, as the seed tasks), {d['completion_tokens_worst']:,} at most",
        f"cost online: ~${d['expected_usd']:,.2f} expected, ${d['worst_usd']:,.2f} at most "
        f"(${d['price']['prompt_usd_per_1m']:g} / ${d['price']['completion_usd_per_1m']:g} per 1M prompt / "
        f"completion tokens, from {d['price']['source']})",
        f"cost batch:  ~${d['batch_expected_usd']:,.2f} expected, ${d['batch_worst_usd']:,.2f} at most "
        f"(${d['batch_price']['prompt_usd_per_1m']:g} / ${d['batch_price']['completion_usd_per_1m']:g}, "
        f"{d['batch_price']['source']}; answered within 24 h)",
        f"transport: {d['transport']} (api.transport: online | batch)",
        f"budget: ${d['budget_usd']:,.2f}"
        + (f", {d['budget_tokens']:,} tokens" if d["budget_tokens"] else "")
        + f"; each request reserves up to ${d['worst_request_usd']:.4f} while in flight",
    ]
    expected = d["batch_expected_usd"] if d["transport"] == "batch" else d["expected_usd"]
    if expected > d["budget_usd"]:
        lines.append(
            f"warning: the expected cost exceeds budget.max_usd; the run would stop at about "
            f"{d['budget_usd'] / expected:.0%} of the target"
        )
    return "\n".join(lines)

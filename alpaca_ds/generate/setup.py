"""Everything a generation run checks before its first request, and the settings its output depends on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from alpaca_ds.api.budget import Cost
from alpaca_ds.api.client import api_key
from alpaca_ds.api.prices import Price, price_for
from alpaca_ds.api.tokens import get_encoding, prompt_tokens
from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import sha256_file
from alpaca_ds.generate import prompts as P
from alpaca_ds.generate.config import GenerateConfig
from alpaca_ds.generate.seeds import Example, load_seed_tasks


@dataclass
class Setup:
    """Everything checked before any request: seeds, template, tokenizer, price, key."""

    cfg: GenerateConfig
    seeds: list[Example]
    seeds_sha256: str
    template: str
    encoding_name: str
    enc: object
    price: Price
    key: str | None
    stop: list[str]
    logit_bias: dict[str, int] | None

    @property
    def prompts_per_request(self) -> int:
        return 1 if self.cfg.api.mode == "chat" else self.cfg.api.prompts_per_request

    def prompts(self, index: int) -> list[str]:
        c = self.cfg
        return P.request_prompts(
            self.template, self.seeds, c.num_prompt_instructions, c.num_tasks, c.seed, index, self.prompts_per_request
        )

    def prompt_tokens(self, prompts: list[str]) -> int:
        return prompt_tokens(self.enc, prompts, self.cfg.api.mode)

    def worst_case(self, prompt_tokens: int, num_prompts: int, price: Price | None = None) -> Cost:
        """The most a request can be billed, at `price` (default: online)."""
        completion = self.cfg.api.max_tokens * self.cfg.api.n * num_prompts
        return Cost((price or self.price).cost(prompt_tokens, completion), prompt_tokens + completion)

    def fingerprint(self) -> dict:
        """The settings a run's output depends on; a restart must use the same ones."""
        c, a = self.cfg, self.cfg.api
        return {
            "seed": c.seed,
            "seed_tasks_sha256": self.seeds_sha256,
            "prompt_template_sha256": hashlib.sha256(self.template.encode()).hexdigest(),
            "num_prompt_instructions": c.num_prompt_instructions,
            "num_tasks": c.num_tasks,
            "rouge_threshold": c.rouge_threshold,
            "filters": c.filters.model_dump(mode="json"),
            "api": {
                "model": a.model,
                "mode": a.mode,
                "prompts_per_request": self.prompts_per_request,
                "n": a.n,
                "max_tokens": a.max_tokens,
                "temperature": a.temperature,
                "top_p": a.top_p,
                "ban_end_of_text": a.ban_end_of_text,
            },
            "encoding": self.encoding_name,
        }


def prepare(cfg: GenerateConfig, need_key: bool = True) -> Setup:
    """Check every input that can be wrong before a request is made; each problem is one clear UserError."""
    if cfg.num_tasks <= cfg.num_prompt_instructions + 1:
        raise UserError(
            f"num_tasks ({cfg.num_tasks}) must exceed num_prompt_instructions + 1 "
            f"({cfg.num_prompt_instructions + 1}) to leave tasks for the teacher to write"
        )
    tasks = load_seed_tasks(cfg.seed_tasks)
    if len(tasks) < cfg.num_prompt_instructions:
        raise UserError(
            f"{cfg.seed_tasks}: {len(tasks)} seed tasks, fewer than num_prompt_instructions "
            f"({cfg.num_prompt_instructions})"
        )
    template = P.load_template(cfg.prompt_template)
    enc = get_encoding(cfg.api.model, cfg.api.encoding)
    price = price_for(cfg.api.model, cfg.budget)
    key = api_key(cfg.api) if need_key else None
    return Setup(
        cfg,
        [t.example for t in tasks],
        sha256_file(cfg.seed_tasks),
        template,
        enc.name,
        enc,
        price,
        key,
        P.stop_sequences(cfg.num_tasks),
        P.logit_bias(enc) if cfg.api.ban_end_of_text else None,
    )


def diff_keys(a, b, prefix="") -> list[str]:
    """The dotted keys where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]

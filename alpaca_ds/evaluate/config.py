"""Evaluation's configurations: answers, the judge, win rates, serving and the feedback demo."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alpaca_ds.api.config import ApiConfig, BudgetConfig, EndpointConfig
from alpaca_ds.config import Schema


class DecodingConfig(Schema):
    """How answers are sampled (`evaluate answer`, `chat`; `serve` takes them per request)."""

    temperature: float = Field(0.7, ge=0, le=2, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(512, gt=0, description="cap on an answer's length in tokens")
    seed: int = Field(0, description="sampling seed of a local model")


class AnswerConfig(Schema):
    """`alpaca-ds evaluate answer`: a model's answers to an eval set, in AlpacaEval's model_outputs.json shape."""

    model: str | None = Field(None, description="exported HF folder (RUN/final) to answer with, locally")
    api: EndpointConfig | None = Field(None, description="or: answer through an OpenAI-compatible endpoint")
    eval_set: str = Field("selfinstruct", description="selfinstruct (252) | alpaca_eval (805) | a JSON/JSONL file")
    data_dir: str = Field("../shared/data", description="where the named eval sets are looked for")
    output: str | None = Field(
        None, description="model_outputs.json path; null = eval/<generator>/<eval set>/model_outputs.json"
    )
    generator: str | None = Field(
        None,
        description="the `generator` name written; null = the model's folder name "
        "(its run's name for RUN/final) or the endpoint's model",
    )
    limit: int | None = Field(None, gt=0, description="answer only the first N items")
    batch_size: int = Field(8, gt=0, description="local model: prompts per generate() call")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="local model: auto = float32 on CPU, the checkpoint's dtype on a GPU"
    )
    device: str = Field("auto", description="local model: auto | cpu | cuda | cuda:N")
    decoding: DecodingConfig = DecodingConfig()
    budget: BudgetConfig | None = Field(None, description="endpoint only: hard spending limit (needs a price)")
    progress: bool = Field(True, description="show a progress bar on stderr")

    @model_validator(mode="after")
    def _one_model(self):
        if (self.model is None) == (self.api is None):
            raise ValueError("set exactly one of model (a local exported folder) and api.base_url (an endpoint)")
        if self.budget is not None and self.api is None:
            raise ValueError("budget applies to an endpoint (api.*); a local model costs no API money")
        return self


class JudgeApiConfig(ApiConfig):
    """The judge model behind an OpenAI-compatible API: one short answer per request."""

    model: str = Field("gpt-4o-mini", description="judge model")
    mode: Literal["completions", "chat"] = Field("chat", description="chat (one user message) or completions")
    max_tokens: int = Field(
        16,
        gt=0,
        description="mode discrete: the judge answers 'Output (a)' or "
        "'Output (b)'; mode weighted asks for 1 token whatever this says",
    )
    temperature: float = Field(0.0, ge=0, le=2)
    ban_end_of_text: bool = Field(False, description="not used by the judge")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(6, ge=0, description="retries of one request before that judgment is left missing")


class JudgeConfig(Schema):
    """`alpaca-ds evaluate judge`: pairwise preferences from a judge model, in AlpacaEval's annotation shape."""

    a: str = Field(description="outputs 1 (the baseline, e.g. text-davinci-003): model_outputs.json shape")
    b: str = Field(description="outputs 2 (the model being judged); the win rate is b's over a")
    out_dir: str | None = Field(
        None,
        description="annotations, call ledger (the cache) and report; null = eval/judge/<generator b>-vs-<generator a>",
    )
    mode: Literal["weighted", "discrete"] = Field(
        "weighted",
        description="weighted: one token with its log-probabilities, preference 1 + P(M)/(P(m)+P(M)) "
        "as AlpacaEval 2.0 (api.max_tokens 1, api.logprobs 5; the reply's verdict where the API gives no "
        "log-probabilities); discrete: the verdict 'Output (a)' or 'Output (b)'",
    )
    prompt_template: str | None = Field(
        None,
        description="judge prompt file with {instruction}, {output_a}, "
        "{output_b}; null = alpaca_ds/evaluate/judge_prompt_weighted.txt "
        "(weighted: the reply is m or M) or judge_prompt.txt (discrete)",
    )
    both_orders: bool = Field(True, description="ask in both orders to cancel position bias")
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight at once")
    limit: int | None = Field(None, gt=0, description="judge only the first N pairs")
    progress: bool = Field(True, description="show a progress bar on stderr")
    api: JudgeApiConfig = JudgeApiConfig()
    budget: BudgetConfig = Field(
        BudgetConfig(max_usd=1.0),
        description="hard limit over all runs in out_dir "
        "(judging AlpacaEval's 805 with gpt-4o-mini in both orders costs about $0.3)",
    )


class WinrateConfig(Schema):
    """`alpaca-ds evaluate winrate`: raw and length-controlled win rates of AlpacaEval-format annotations."""

    annotations: str = Field(description="annotations: a JSON list or JSONL (AlpacaEval's shape)")
    out: str | None = Field(None, description="folder for winrate.md and winrate.json; null = beside the annotations")
    difficulty: str | None = Field(
        None,
        description="CSV of instruction_difficulty by index or instruction for the "
        "length-controlled GLM; null = length and ψ only",
    )
    gamed: str | None = Field(
        None,
        description="CSV of gamed-baseline rows (AlpacaEval's df_gamed.csv shape) that regularise the GLM; null = none",
    )
    gamed_weight: float = Field(
        0.2, gt=0, description="total weight of the gamed rows (AlpacaEval's regularize_to_baseline_lambda)"
    )


class ServeConfig(Schema):
    """`alpaca-ds serve` and `alpaca-ds chat`: a fine-tuned model, locally."""

    model: str = Field(description="exported HF folder (RUN/final)")
    name: str | None = Field(None, description="model name the server answers to; null = as evaluate answer names it")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one (printed)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    max_new_tokens_cap: int = Field(2048, gt=0, description="serve: the most a request's max_tokens may ask for")
    decoding: DecodingConfig = DecodingConfig()


class ContentFilterConfig(Schema):
    """The demo's optional content filter on prompts and answers, as Alpaca's demo had."""

    words: str | None = Field(
        None,
        description="file of words or phrases (one a line, # comments) that a prompt "
        "or answer may not contain, matched as whole words, case-insensitively",
    )
    moderation_url: str | None = Field(
        None, description="OpenAI-compatible endpoint ending in /v1 whose /moderations judges each prompt and answer"
    )
    moderation_model: str | None = Field(
        None, description="model to ask the moderation endpoint for; null = its default"
    )
    api_key_env: str | None = Field(None, description="environment variable holding the moderation endpoint's key")


class DemoConfig(Schema):
    """`alpaca-ds demo`: a web page to talk to a model and rate its answers; ratings go to a JSONL file."""

    model: str = Field(
        description="exported HF folder (RUN/final), or an OpenAI-compatible endpoint ending in /v1 "
        "(alpaca-ds serve, vLLM) that answers Alpaca's prompt on /completions"
    )
    name: str | None = Field(
        None,
        description="model name recorded with feedback (and asked of an endpoint); "
        "null = the folder's run name, or the endpoint's first /models entry",
    )
    api_key_env: str | None = Field(None, description="environment variable holding the endpoint's key")
    feedback: str = Field("demo/feedback.jsonl", description="JSONL each answer and rating is appended to (fsync)")
    host: str = Field("127.0.0.1", description="address to bind; anything else shares the demo with the network")
    port: int = Field(7860, ge=0, le=65535, description="TCP port; 0 picks a free one (printed)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    decoding: DecodingConfig = Field(DecodingConfig(), description="the page's initial decoding settings")
    max_new_tokens_cap: int = Field(1024, gt=0, description="the most max_new_tokens the page may ask for")
    filter: ContentFilterConfig = ContentFilterConfig()

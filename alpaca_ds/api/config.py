"""The API layer's configuration: endpoint, model, transport (online or the Batch API), retries and rate limits,
and the hard budget; shared by `generate` and `evaluate judge`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alpaca_ds.config import Schema


class BatchApiConfig(Schema):
    """The Batch API transport (api.transport: batch)."""

    poll_s: float = Field(30.0, gt=0, description="seconds between two looks at the batches in flight")
    max_requests_per_file: int = Field(
        50_000, ge=1, le=50_000, description="requests per batch input file (the API's limit: 50,000)"
    )
    max_file_mb: float = Field(
        200.0, gt=0, le=200, description="size of a batch input file in MB at most (the API's limit: 200)"
    )
    completion_window: Literal["24h"] = Field(
        "24h", description="the batch's completion_window (the API accepts only 24h)"
    )
    max_wave_requests: int | None = Field(
        None, ge=1, description="requests per wave at most; null = as many as the target needs and the budget allows"
    )


def api_key_env_field(default: str | None):
    """The field naming the environment variable of an API key (the key itself is never configured)."""
    return Field(
        default,
        description="environment variable holding the key (never written anywhere); "
        "null for a local server that needs none",
    )


class ApiConfig(Schema):
    """The teacher model behind an OpenAI-compatible API (`generate`; `evaluate judge` derives its own)."""

    base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible endpoint, ending in /v1")
    model: str = Field("gpt-3.5-turbo-instruct", description="teacher model; Alpaca used text-davinci-003")
    mode: Literal["completions", "chat"] = Field(
        "completions", description="completions: Alpaca's API, several prompts per request; chat: one per request"
    )
    api_key_env: str | None = api_key_env_field("OPENAI_API_KEY")
    encoding: str | None = Field(None, description="tiktoken encoding; default tiktoken.encoding_for_model(model)")
    prompts_per_request: int = Field(5, ge=1, le=20, description="completions mode: prompts per request (Alpaca: 5)")
    n: int = Field(1, ge=1, le=16, description="completions per prompt")
    max_tokens: int = Field(3072, gt=0, description="completion tokens per prompt at most (Alpaca: 3072)")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    ban_end_of_text: bool = Field(True, description="logit_bias -100 on the encoding's end-of-text id, as Alpaca")
    timeout_s: float = Field(300.0, gt=0, description="per-request timeout in seconds")
    http_backend: Literal["aiohttp", "httpx"] = Field(
        "aiohttp",
        description="online requests: aiohttp (one aiohttp POST with the openai client's headers, a fifth of "
        "the CPU per request; HTTP(S) proxies only, redirects not followed) or httpx (through the openai client "
        "itself; SOCKS proxies with socksio); the Batch API goes through the openai client either way",
    )
    max_retries: int = Field(8, ge=0, description="retries of one request before it is recorded as failed")
    backoff_initial_s: float = Field(1.0, gt=0, description="first retry delay; doubles per retry, with jitter")
    backoff_max_s: float = Field(60.0, gt=0, description="cap of the retry delay (Retry-After may ask for more)")
    requests_per_minute: float = Field(0, ge=0, description="client-side request rate limit; 0 = none")
    tokens_per_minute: float = Field(
        0, ge=0, description="client-side token rate limit (worst case per request); 0 = none"
    )
    max_consecutive_failures: int = Field(
        50, gt=0, description="stop the run after this many requests in a row failed all their retries"
    )
    transport: Literal["online", "batch"] = Field(
        "online",
        description="online: one HTTP request per call; batch: the Batch API (/v1/files + /v1/batches), "
        "half the price at OpenAI, answered within 24 h",
    )
    batch: BatchApiConfig = Field(BatchApiConfig(), description="api.transport: batch only")
    logprobs: int | None = Field(
        None,
        ge=0,
        le=20,
        description="ask for the top-N log-probabilities of each "
        "generated token (chat: logprobs + top_logprobs; completions: logprobs) and keep "
        "them in the ledger; null = none (evaluate judge's weighted mode asks for 5)",
    )


class BudgetConfig(Schema):
    """Hard spending limits: a request is sent only when its worst case fits in what is left."""

    max_usd: float = Field(ge=0, description="dollars this output directory may spend in total, over all restarts")
    max_tokens: int | None = Field(None, ge=0, description="total prompt + completion tokens; null = no token limit")
    prices: str | None = Field(None, description="price table YAML; null = alpaca_ds/api/prices.yaml")
    prompt_usd_per_1m: float | None = Field(None, ge=0, description="explicit prompt price ($/1M tokens) for api.model")
    completion_usd_per_1m: float | None = Field(None, ge=0, description="explicit completion price ($/1M tokens)")

    @model_validator(mode="after")
    def _both_prices(self):
        if (self.prompt_usd_per_1m is None) != (self.completion_usd_per_1m is None):
            raise ValueError("set both budget.prompt_usd_per_1m and budget.completion_usd_per_1m, or neither")
        return self


class EndpointConfig(Schema):
    """A model behind an OpenAI-compatible endpoint that answers the eval set (`alpaca-ds serve`, vLLM, OpenAI)."""

    base_url: str = Field(description="endpoint ending in /v1, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="model name to request; null = the one the endpoint's /v1/models lists")
    mode: Literal["completions", "chat"] = Field(
        "completions",
        description="completions: send Alpaca's prompt (a fine-tuned Alpaca model); chat: send the "
        "instruction (and input) as one user message (a chat model)",
    )
    api_key_env: str | None = api_key_env_field(None)
    encoding: str | None = Field(None, description="tiktoken encoding for counting tokens (only with a budget)")
    prompts_per_request: int = Field(8, ge=1, le=20, description="completions mode: prompts per request")
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once")
    timeout_s: float = Field(600.0, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(5, ge=0, description="retries of one request before the run stops")
    backoff_initial_s: float = Field(1.0, gt=0, description="first retry delay; doubles per retry, with jitter")
    backoff_max_s: float = Field(60.0, gt=0, description="cap of the retry delay")
    requests_per_minute: float = Field(0, ge=0, description="client-side request rate limit; 0 = none")
    tokens_per_minute: float = Field(0, ge=0, description="client-side token rate limit; 0 = none")

"""Typed, frozen configuration: YAML files plus repeatable `--set dotted.key=value` overrides.

Each stage has one schema here. Unknown keys, wrong types and missing values fail before any work with a
message that names the file (or the `--set` that caused it), the dotted key, and the nearest valid key.
Relative paths in a config are taken relative to the directory the command runs in.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alpaca_ds.common.errors import UserError


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataBuildConfig(Schema):
    """`alpaca-ds data build`: Alpaca-format records -> tokenized, loss-masked, memory-mapped shards."""

    input: str = Field(description="Alpaca-format JSON list or JSONL: a local path or an http(s) URL")
    sha256: str | None = Field(None, description="expected sha256 of the input; required for a URL")
    output: str = Field(description="dataset directory; manifest.json is written there last")
    tokenizer: str = Field(description="tokenizer folder or hub id (the model's tokenizer)")
    max_length: int = Field(512, gt=1, description="truncation length in tokens, as Alpaca's model_max_length")
    overlength: Literal["truncate", "drop"] = Field(
        "truncate", description="truncate as Alpaca does, or drop examples longer than max_length")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of records hashed into validation")
    split_seed: int = Field(0, description="seed of the content hash that assigns records to splits")
    shard_size: int = Field(100_000, gt=0, description="examples per shard file")
    batch_size: int = Field(2_048, gt=0, description="records per tokenization task sent to a worker")
    workers: int = Field(0, ge=0, description="tokenizer worker processes; 0 = one per CPU core")
    skip_invalid: bool = Field(False, description="skip (and count) invalid records instead of failing")
    download_dir: str = Field("~/.cache/alpaca-ds/downloads", description="where URL inputs are cached")


class ModelConfig(Schema):
    name_or_path: str | None = Field(None, description="pretrained weights: a folder or hub id")
    init_config: dict[str, Any] | None = Field(None, description="random init from these LlamaConfig keys (tiny runs)")
    init_seed: int = Field(0, description="seed of the random init")
    tokenizer: str | None = Field(None, description="the model's tokenizer; defaults to name_or_path")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _one_source(self):
        if (self.name_or_path is None) == (self.init_config is None):
            raise ValueError("set exactly one of model.name_or_path (pretrained) and model.init_config (random init)")
        if self.tokenizer is None and self.name_or_path is None:
            raise ValueError("a randomly initialised model needs model.tokenizer")
        return self

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.name_or_path


class TrainDataConfig(Schema):
    path: str = Field(description="tokenized dataset directory (alpaca-ds data build)")
    batching: Literal["random", "length_grouped", "packed"] = Field(
        "random", description="random: pad to longest, as Alpaca; length_grouped; packed: several examples per row")
    pack_length: int = Field(2048, gt=0, description="tokens per packed row")
    seed: int = Field(42, description="shuffling seed")


class BatchConfig(Schema):
    global_batch_size: int = Field(128, gt=0, description="examples (rows when packed) per optimizer step")
    micro_batch_size: int = Field(4, gt=0, description="per GPU per forward pass")
    gradient_accumulation_steps: int | None = Field(None, gt=0, description="derived from the world size when unset")

    def resolve(self, world_size: int) -> tuple[int, int]:
        """(micro, accumulation) with micro x accumulation x world == global, or a UserError with the arithmetic."""
        micro, glob = self.micro_batch_size, self.global_batch_size
        if self.gradient_accumulation_steps is not None:
            accum = self.gradient_accumulation_steps
            if micro * accum * world_size != glob:
                raise UserError(f"batch: micro_batch_size {micro} x gradient_accumulation_steps {accum} x world "
                                f"{world_size} = {micro * accum * world_size}, not global_batch_size {glob}; unset "
                                "gradient_accumulation_steps to derive it from the world size")
            return micro, accum
        if glob % (micro * world_size):
            fits = [m for m in range(1, glob + 1) if glob % (m * world_size) == 0]
            hint = (f"micro_batch_size values that work on {world_size} GPUs: {', '.join(map(str, fits[:8]))}"
                    if fits else f"no micro-batch size works: {glob} is not divisible by {world_size} GPUs; "
                    "change the GPU count or global_batch_size")
            raise UserError(f"batch: global_batch_size {glob} / (micro_batch_size {micro} x world {world_size} = "
                            f"{micro * world_size}) = {glob / (micro * world_size):g} is not a whole number of "
                            f"accumulation steps; {hint}")
        return micro, glob // (micro * world_size)


class OptimConfig(Schema):
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm; 0 disables clipping")
    epochs: int = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps with linear warmup")


class CheckpointConfig(Schema):
    every_steps: int = Field(500, gt=0)
    keep_last: int = Field(2, gt=0)


class LogConfig(Schema):
    every_steps: int = Field(1, gt=0, description="optimizer steps per metrics.jsonl line")
    eval_every_steps: int = Field(0, ge=0, description="validation loss interval; 0 = at the end only")
    peak_tflops: float = Field(312.0, gt=0, description="per-device peak for MFU (A100 bf16 dense: 312)")
    tensorboard: bool = False
    csv: bool = False
    wandb: bool = False


class TrainConfig(Schema):
    """`alpaca-ds train`: a recipe (launch/recipes/*.yaml) for fine-tuning with DeepSpeed."""

    output_dir: str
    ds_config: str = Field("ds_configs/zero3_bf16.yaml", description="DeepSpeed engine config (commented YAML)")
    seed: int = 42
    model: ModelConfig
    data: TrainDataConfig
    batch: BatchConfig = BatchConfig()
    optim: OptimConfig = OptimConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log: LogConfig = LogConfig()
    export_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class BatchApiConfig(Schema):
    """The Batch API transport (api.transport: batch)."""

    poll_s: float = Field(30.0, gt=0, description="seconds between two looks at the batches in flight")
    max_requests_per_file: int = Field(50_000, ge=1, le=50_000, description="requests per batch input file "
                                       "(the API's limit: 50,000)")
    max_file_mb: float = Field(200.0, gt=0, le=200, description="size of a batch input file in MB at most (the "
                               "API's limit: 200)")
    completion_window: Literal["24h"] = Field("24h", description="the batch's completion_window (the API accepts "
                                              "only 24h)")
    max_wave_requests: int | None = Field(None, ge=1, description="requests per wave at most; null = as many "
                                          "as the target needs and the budget allows")


class ApiConfig(Schema):
    """The teacher model behind an OpenAI-compatible API (`generate`; `evaluate judge` derives its own)."""

    base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible endpoint, ending in /v1")
    model: str = Field("gpt-3.5-turbo-instruct", description="teacher model; Alpaca used text-davinci-003")
    mode: Literal["completions", "chat"] = Field(
        "completions", description="completions: Alpaca's API, several prompts per request; chat: one per request")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="environment variable holding the key (never written anywhere); "
        "null for a local server that needs none")
    encoding: str | None = Field(None, description="tiktoken encoding; default tiktoken.encoding_for_model(model)")
    prompts_per_request: int = Field(5, ge=1, le=20, description="completions mode: prompts per request (Alpaca: 5)")
    n: int = Field(1, ge=1, le=16, description="completions per prompt")
    max_tokens: int = Field(3072, gt=0, description="completion tokens per prompt at most (Alpaca: 3072)")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    ban_end_of_text: bool = Field(True, description="logit_bias -100 on the encoding's end-of-text id, as Alpaca")
    timeout_s: float = Field(300.0, gt=0, description="per-request timeout in seconds")
    http_backend: Literal["aiohttp", "httpx"] = Field(
        "aiohttp", description="the openai client's HTTP transport: aiohttp (its DefaultAioHttpClient, less CPU "
        "per request) or httpx (its default)")
    max_retries: int = Field(8, ge=0, description="retries of one request before it is recorded as failed")
    backoff_initial_s: float = Field(1.0, gt=0, description="first retry delay; doubles per retry, with jitter")
    backoff_max_s: float = Field(60.0, gt=0, description="cap of the retry delay (Retry-After may ask for more)")
    requests_per_minute: float = Field(0, ge=0, description="client-side request rate limit; 0 = none")
    tokens_per_minute: float = Field(0, ge=0, description="client-side token rate limit (worst case per request); 0 = none")
    max_consecutive_failures: int = Field(
        50, gt=0, description="stop the run after this many requests in a row failed all their retries")
    transport: Literal["online", "batch"] = Field(
        "online", description="online: one HTTP request per call; batch: the Batch API (/v1/files + /v1/batches), "
        "half the price at OpenAI, answered within 24 h")
    batch: BatchApiConfig = Field(BatchApiConfig(), description="api.transport: batch only")


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


class FilterConfig(Schema):
    """Alpaca's filters on generated instructions (each rejection is counted by reason in stats.json)."""

    min_words: int = Field(4, ge=0, description="fewer words are rejected (Alpaca: more than 3)")
    max_words: int = Field(150, gt=0, description="more words are rejected (Alpaca: 150)")
    blacklist: tuple[str, ...] = Field(
        ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
         "plot", "go to", "video", "audio", "music", "flowchart", "diagram"),
        description="whole words (case-insensitive) a text-only model cannot serve")
    banned_prefixes: tuple[str, ...] = Field(("Write a program",), description="instructions starting so are dropped")
    reject_punctuation_start: bool = Field(True, description="drop instructions whose first character is punctuation")
    reject_non_ascii_start: bool = Field(True, description="drop instructions whose first character is not ASCII")


class GenerateConfig(Schema):
    """`alpaca-ds generate`: self-instruct data from a teacher model (launch/recipes/self_instruct_*.yaml)."""

    out_dir: str = Field(description="run directory; rerunning with the same one continues where it stopped")
    num_instructions: int = Field(gt=0, description="accepted instructions to produce (Alpaca: 52,002)")
    seed: int = Field(42, description="request i's in-context examples come from an RNG seeded with (seed, i)")
    concurrency: int = Field(8, ge=1, le=1000, description="requests in flight at once")
    rouge_threshold: float = Field(0.7, ge=0, le=1, description="reject when ROUGE-L F vs any kept instruction exceeds it")
    seed_tasks: str = Field("seeds/seed_tasks.jsonl", description="seed tasks, self-instruct JSONL format")
    prompt_template: str | None = Field(None, description="prompt text file; null = alpaca_ds/generate/prompt.txt")
    num_prompt_instructions: int = Field(3, ge=1, le=10, description="in-context seed examples per prompt (Alpaca: 3)")
    num_tasks: int = Field(20, ge=2, le=99, description="list length asked for; generation stops at that number")
    max_requests: int | None = Field(None, gt=0, description="stop after this many requests in total (trials)")
    expected_accept_rate: float = Field(
        0.25, gt=0, le=1, description="--dry-run's prior share of generated candidates that are kept, until a run "
        "in out_dir has measured one")
    progress: bool = Field(True, description="show a progress bar on stderr")
    api: ApiConfig = ApiConfig()
    budget: BudgetConfig
    filters: FilterConfig = FilterConfig()


class DecodingConfig(Schema):
    """How answers are sampled (`evaluate answer`, `chat`; `serve` takes them per request)."""

    temperature: float = Field(0.7, ge=0, le=2, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(512, gt=0, description="cap on an answer's length in tokens")
    seed: int = Field(0, description="sampling seed of a local model")


class EndpointConfig(Schema):
    """A model behind an OpenAI-compatible endpoint that answers the eval set (`alpaca-ds serve`, vLLM, OpenAI)."""

    base_url: str = Field(description="endpoint ending in /v1, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="model name to request; null = the one the endpoint's /v1/models lists")
    mode: Literal["completions", "chat"] = Field(
        "completions", description="completions: send Alpaca's prompt (a fine-tuned Alpaca model); chat: send the "
        "instruction (and input) as one user message (a chat model)")
    api_key_env: str | None = Field(None, description="environment variable holding the key (never written "
                                    "anywhere); null for a local server that needs none")
    encoding: str | None = Field(None, description="tiktoken encoding for counting tokens (only with a budget)")
    prompts_per_request: int = Field(8, ge=1, le=20, description="completions mode: prompts per request")
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once")
    timeout_s: float = Field(600.0, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(5, ge=0, description="retries of one request before the run stops")
    backoff_initial_s: float = Field(1.0, gt=0, description="first retry delay; doubles per retry, with jitter")
    backoff_max_s: float = Field(60.0, gt=0, description="cap of the retry delay")
    requests_per_minute: float = Field(0, ge=0, description="client-side request rate limit; 0 = none")
    tokens_per_minute: float = Field(0, ge=0, description="client-side token rate limit; 0 = none")


class AnswerConfig(Schema):
    """`alpaca-ds evaluate answer`: a model's answers to an eval set, in AlpacaEval's model_outputs.json shape."""

    model: str | None = Field(None, description="exported HF folder (RUN/final) to answer with, locally")
    api: EndpointConfig | None = Field(None, description="or: answer through an OpenAI-compatible endpoint")
    eval_set: str = Field("selfinstruct", description="selfinstruct (252) | alpaca_eval (805) | a JSON/JSONL file")
    data_dir: str = Field("../shared/data", description="where the named eval sets are looked for")
    output: str | None = Field(None, description="model_outputs.json path; null = eval/<generator>/<eval set>/"
                               "model_outputs.json")
    generator: str | None = Field(None, description="the `generator` name written; null = the model's folder name "
                                  "(its run's name for RUN/final) or the endpoint's model")
    limit: int | None = Field(None, gt=0, description="answer only the first N items")
    batch_size: int = Field(8, gt=0, description="local model: prompts per generate() call")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="local model: auto = float32 on CPU, the checkpoint's dtype on a GPU")
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
    max_tokens: int = Field(16, gt=0, description="the judge answers 'Output (a)' or 'Output (b)'")
    temperature: float = Field(0.0, ge=0, le=2)
    ban_end_of_text: bool = Field(False, description="not used by the judge")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(6, ge=0, description="retries of one request before that judgment is left missing")


class JudgeConfig(Schema):
    """`alpaca-ds evaluate judge`: pairwise preferences from a judge model, in AlpacaEval's annotation shape."""

    a: str = Field(description="outputs 1 (the baseline, e.g. text-davinci-003): model_outputs.json shape")
    b: str = Field(description="outputs 2 (the model being judged); the win rate is b's over a")
    out_dir: str | None = Field(None, description="annotations, call ledger (the cache) and report; null = "
                                "eval/judge/<generator b>-vs-<generator a>")
    prompt_template: str | None = Field(None, description="judge prompt file with {instruction}, {output_a}, "
                                        "{output_b}; null = alpaca_ds/evaluate/judge_prompt.txt")
    both_orders: bool = Field(True, description="ask in both orders to cancel position bias")
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight at once")
    limit: int | None = Field(None, gt=0, description="judge only the first N pairs")
    progress: bool = Field(True, description="show a progress bar on stderr")
    api: JudgeApiConfig = JudgeApiConfig()
    budget: BudgetConfig = Field(BudgetConfig(max_usd=1.0), description="hard limit over all runs in out_dir "
                                 "(judging AlpacaEval's 805 with gpt-4o-mini in both orders costs about $0.3)")


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


class QuickstartGenerateConfig(Schema):
    """The quickstart's generation step: self-instruct against the local teacher simulator."""

    seed_tasks: str = Field("seeds/seed_tasks.jsonl", description="seed tasks, self-instruct JSONL format")
    num_instructions: int = Field(300, gt=0, description="accepted instructions to generate")
    teacher_model: str = Field("gpt-3.5-turbo-instruct", description="model name sent to the simulator; the "
                               "cost table prices the simulator's token counts as this model's")
    budget_usd: float = Field(0.5, gt=0, description="hard budget of the generation, at teacher_model's price")
    seed: int = Field(42, description="seed of the prompts (and of the simulator's answers)")
    concurrency: int = Field(8, ge=1, le=1000, description="requests in flight at once")


class QuickstartDataConfig(Schema):
    """The quickstart's dataset build."""

    tokenizer: str = Field("data/tokenizer", description="tokenizer folder (the small SentencePiece model shipped "
                           "in data/tokenizer)")
    max_length: int = Field(512, gt=1, description="truncation length in tokens")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of records hashed into validation")


class QuickstartTrainConfig(Schema):
    """The quickstart's training run: a recipe's model, batch and optimizer on the generated data."""

    recipe: str = Field("launch/recipes/tiny.yaml", description="training recipe (its model, batch, optim, "
                        "checkpoint and log sections are used; data, output and tokenizer come from the quickstart)")
    ds_config: str = Field("ds_configs/zero3_bf16.yaml", description="DeepSpeed engine config")
    ranks: int = Field(2, ge=1, description="CPU ranks started by the deepspeed launcher")
    epochs: int = Field(3, gt=0, description="passes over the generated data")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")


class QuickstartEvaluateConfig(Schema):
    """The quickstart's evaluation: answers to held-out tasks and a judged win rate against their reference."""

    eval_set: str = Field("data/sample/alpaca_sample.json", description="Alpaca-format records never trained on "
                          "in the quickstart; their `output` is the reference the model is judged against")
    tasks: int = Field(20, gt=0, description="the first N records of eval_set are answered and judged")
    max_new_tokens: int = Field(128, gt=0, description="cap on an answer's length in tokens")
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature of the answers; 0 = greedy")
    judge_model: str = Field("gpt-4o-mini", description="model name sent to the simulator's judge mode; the cost "
                             "table prices its token counts as this model's")
    judge_budget_usd: float = Field(0.05, gt=0, description="hard budget of the judging, at judge_model's price")


class QuickstartConfig(Schema):
    """`alpaca-ds quickstart`: the whole pipeline, offline, on CPU (launch/recipes/quickstart.yaml)."""

    out_dir: str = Field("runs/quickstart", description="run directory: generated/, tokenized/, run/, export/, "
                         "eval/, configs/ and report.md; rerunning with it continues where it stopped")
    generate: QuickstartGenerateConfig = QuickstartGenerateConfig()
    data: QuickstartDataConfig = QuickstartDataConfig()
    train: QuickstartTrainConfig = QuickstartTrainConfig()
    evaluate: QuickstartEvaluateConfig = QuickstartEvaluateConfig()
    quick: dict[str, Any] = Field(default_factory=dict, description="`--quick`: keys (in the sections above) that "
                                  "replace the full run's, for a smaller variant such as CI's")

    @model_validator(mode="after")
    def _quick_valid(self):
        if self.quick:
            self.with_quick()  # a bad key under `quick` fails at load, not after the first steps have run
        return self

    def with_quick(self) -> "QuickstartConfig":
        """This config with the `quick` section's values applied (and `quick` itself emptied)."""
        data = _deep_merge(self.model_dump(mode="json", exclude={"quick"}), self.quick)
        try:
            return QuickstartConfig.model_validate(data)
        except ValidationError as e:
            problems = "; ".join(f"quick.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ValueError(problems) from None


def load_config(schema: type[Schema], path: str | Path | None, overrides: tuple[str, ...] | list[str] = (),
                defaults: dict[str, Any] | None = None) -> Schema:
    """Load `path` (or only `defaults` when None), apply `--set` overrides, validate against `schema`."""
    data: dict[str, Any] = dict(defaults or {})
    source = "built-in defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"{path}: cannot read config: {e.strerror or e}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"{path}: invalid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: the top level must be a mapping of keys to values, got {type(loaded).__name__}")
        data = _deep_merge(data, loaded)
    from_set: dict[str, str] = {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value, item)
        from_set[key] = item
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise UserError(_explain(schema, e, source, from_set)) from None


def dump_config(config: Schema) -> str:
    """The resolved config as YAML, in schema order; loading it back gives an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected dotted.key=value, e.g. --set max_length=1024")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # Scalars stay text: the schema converts "1024" to an int where it wants one, and a hash such as
    # "0042" stays the string it is. YAML still gives lists, mappings and null.
    if isinstance(value, (bool, int, float)):
        value = raw
    return key.strip(), value


def _set_dotted(data: dict, key: str, value: Any, item: str) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _fields_at(schema: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys of the (sub)schema that contains the key at `loc`."""
    model: Any = schema
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _explain(schema: type[Schema], error: ValidationError, source: str, from_set: dict[str, str]) -> str:
    lines = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"])
        key = ".".join(str(p) for p in loc)
        where = f"--set {from_set[key]!r}" if key in from_set else source
        if err["type"] == "extra_forbidden":
            valid = _fields_at(schema, loc)
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), near[0]])!r}?" if near else ""
            lines.append(f"{where}: unknown key {key!r}{hint} (valid keys here: {', '.join(valid)})")
        elif err["type"] == "missing":
            lines.append(f"{where}: missing value for {key!r}; set it in the file or with --set {key}=...")
        else:
            lines.append(f"{where}: {key}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid {schema.__name__} configuration:\n  " + "\n  ".join(lines)

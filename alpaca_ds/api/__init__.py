"""Everything that talks to an OpenAI-compatible API and spends money, for `generate` and `evaluate` alike; it
imports neither stage.

  config.py       ApiConfig, BudgetConfig, BatchApiConfig, EndpointConfig (the schemas)
  client.py       ApiClient: one request (an aiohttp POST as the openai client sends it), its outcome, the API key
  prices.py       online and batch prices (prices.yaml), the price of a call
  tokens.py       prompt-token counting (tiktoken) and worst-case completion tokens
  budget.py       the hard budget: reserve a call's worst case, settle by its reported usage
  limits.py       requests/tokens per minute (aiolimiter)
  calls.py        one call with retries, backoff and Retry-After
  ledger.py       the fsync'd call ledger (on common/journal.py) and its replay
  runner.py       one runner: worker pool, stop reasons, signals, exit codes, the cost report
  batch.py        the Batch API transport: parts and their ledger lines, submitting, polling, settling,
                  resubmission, cancel
  batch_wire.py   the Batch API's calls (retried) and its JSONL request and result lines
  batch_waves.py  run_keyed: keyed requests (evaluate's) in waves through the transport
  progress.py     the progress line
"""

"""Everything that talks to an OpenAI-compatible API and spends money, for `generate` and `evaluate` alike:
the client (client.py), prices online and batch (prices.py, prices.yaml), token counting (tokens.py), the hard
budget (budget.py), rate limits (limits.py), retries (calls.py), the fsync'd call ledger and its replay
(ledger.py, on common/journal.py), one runner with the stop / exit-code / cost-report behaviour (runner.py), the Batch API
transport (batch.py) and the progress line (progress.py). It imports neither stage."""

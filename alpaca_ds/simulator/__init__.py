"""The one fake OpenAI-compatible server of alpaca-ds (tests, benchmarks, the offline quickstart): a SIMULATED
teacher and judge (teacher.py, judge.py) behind /v1/completions and /v1/chat/completions, the Batch API's
/v1/files and /v1/batches (batch.py), faults on demand (server.py); started by local.py. Not a language model."""

"""The one fake OpenAI-compatible server of alpaca-ds (tests, benchmarks, the offline quickstart). Not a language
model.

  server.py      the aiohttp app: /v1/completions, /v1/chat/completions, /v1/models, faults on demand, the bill
  teacher.py     the SIMULATED teacher: Alpaca-format answers recombined from seed tasks
  judge.py       the SIMULATED judge: verdicts for prompts that label two outputs; logprobs.py its log-probabilities
  moderation.py  /v1/moderations by a word list
  batch.py       the Batch API: /v1/files and /v1/batches
  local.py       starting it in a thread or a process
"""

"""Evaluation and demo. Imports only `dataset.template`, the API layer (`alpaca_ds.api`) and `common` from other
rooms; never `generate`, never deepspeed.

  config.py          AnswerConfig, JudgeConfig, WinrateConfig, ServeConfig, DemoConfig, ...
  eval_sets.py       the named eval sets and model_outputs.json files
  answers.py         `evaluate answer`: a model's answers (local folder or endpoint), resumable
  judge.py           `evaluate judge`: pairwise judging, weighted (log-probabilities) or discrete
  winrate.py         raw win rates (AlpacaEval 1.0) and the report
  lc_winrate.py      the length-controlled win rate (AlpacaEval 2.0's GLM)
  human.py           the human A/B page
  demo.py            the feedback demo page; feedback.py its fsync'd feedback file and summary;
                     content_filter.py the word list / moderation filter
  local.py           a local model's generation (Alpaca's template, streaming)
  serve.py, chat.py  an OpenAI-compatible server and the terminal chat
"""

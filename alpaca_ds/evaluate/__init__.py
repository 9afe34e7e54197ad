"""Evaluation and demo: answers on eval sets, pairwise judging, win rates, a human A/B page, chat and serving.

Imports only `dataset.template` and the API layer (`alpaca_ds.api`) from other rooms; never `generate`, never
deepspeed.
"""

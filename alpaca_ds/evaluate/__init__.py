"""Evaluation and demo: answers on eval sets, pairwise judging, win rates (raw and length-controlled), a human A/B
page, the feedback demo, chat and serving.

Imports only `dataset.template`, the API layer (`alpaca_ds.api`) and `common` from other rooms; never `generate`,
never deepspeed.
"""

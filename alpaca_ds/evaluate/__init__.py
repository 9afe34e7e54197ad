"""Evaluation and demo: answers on eval sets, pairwise judging, win rates, a human A/B page, chat and serving.

Imports only `dataset.template` and `generate.*` (client, budget, limits, prices, journal) from other stages;
never deepspeed.
"""

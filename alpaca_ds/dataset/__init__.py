"""Alpaca-format records -> tokenized, loss-masked, memory-mapped shards, and reading them back; no deepspeed.

config.py     DataBuildConfig
template.py   Alpaca's PROMPT_DICT, byte for byte
tokenizer.py  loading a tokenizer (SentencePiece folders as SentencePiece does)
records.py    Alpaca records from JSON or JSONL, with errors that say where
encode.py     tokenize + mask (the worker processes' code)
build.py      `alpaca-ds data build`: workers, shards, manifest last
shards.py     TokenizedDataset: the memory-mapped shards
sampler.py    MicroBatchSampler: per-rank micro-batches, resumable
collate.py    padding and packing into batches
inspect.py    `alpaca-ds data inspect`
"""

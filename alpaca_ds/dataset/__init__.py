"""Alpaca-format records -> tokenized, loss-masked, memory-mapped shards, and reading them back."""

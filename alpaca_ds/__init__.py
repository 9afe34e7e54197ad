"""alpaca-ds: build instruction-following models the way Stanford Alpaca did, with DeepSpeed."""

__version__ = "0.1.0"

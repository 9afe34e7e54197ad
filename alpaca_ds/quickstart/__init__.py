"""The whole pipeline in one offline command: `alpaca-ds quickstart` (see pipeline.py)."""

"""The `alpaca-ds` commands by job, registered on the group in alpaca_ds/cli.py: options.py (the shared
--config/--set options and how a run that can stop early ends), evaluate.py (evaluate, chat, serve, demo), release.py."""

"""The `alpaca-ds` commands by job, registered on the group in alpaca_ds/cli.py: options.py (the shared
--config/--set options and how a run that can stop early ends), data.py (data build, inspect), generate.py (generate,
teacher serve), train.py (train, launch, plan, export, config render), evaluate.py (evaluate, chat, serve, demo),
release.py. Each command loads its config, calls one stage function and prints the result's summary()."""

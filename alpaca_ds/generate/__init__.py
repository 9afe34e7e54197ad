"""Self-instruct generation: prompts, parsing, filters, ROUGE-L de-duplication, the in-order processor and the run
directory, and the two transports (online.py, batch.py) on top of the API layer (alpaca_ds.api); never evaluate."""

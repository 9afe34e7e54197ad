"""Self-instruct generation: prompts, teacher client, filters, ROUGE-L de-duplication, budget, resumable state."""

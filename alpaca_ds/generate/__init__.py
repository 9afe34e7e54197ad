"""Self-instruct generation on top of the API layer (alpaca_ds.api); never evaluate, no torch.

config.py           GenerateConfig, FilterConfig
run.py              `alpaca-ds generate`: the entry point (result.py: what it returns, its summary line)
setup.py            checks and the pieces a run needs
seeds.py            seed tasks (self-instruct format)
prompts.py          prompts from seeds (prompt.txt), parsing the teacher's answers
filters.py          Alpaca's filters
rouge.py            exact ROUGE-L de-duplication (rouge_kernels.py: its compiled storage and filters,
                    rouge_scan.py: the compiled scan behind every query's scores, top-k and mean)
processor.py        answers -> accepted records, strictly in request order
backlog.py          the processing thread: answers processed behind the requests, in order, bounded memory
rundir.py           the run directory: ledger, accepted.jsonl, regen.json, stats, cost
online.py, batch.py the two transports
dryrun.py           the dry run: requests, tokens, dollars
"""

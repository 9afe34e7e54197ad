"""Self-instruct generation, end to end: prompts -> teacher -> parse -> filters -> ROUGE-L -> accepted records.

    alpaca-ds teacher serve --port 8765 &                                   # the local simulator, or a real API
    alpaca-ds generate --config launch/recipes/self_instruct_local.yaml
    alpaca-ds generate --config launch/recipes/self_instruct_openai.yaml --dry-run
    alpaca-ds generate --config launch/recipes/self_instruct_openai.yaml --set api.transport=batch

The run directory (rundir.py) holds the ledger every answer is replayed from; the transport sends the requests:
online (online.py), or the Batch API at its lower price (batch.py). Both process answers in request order, so the
same answers per request index give the same regen.json whichever transport, concurrency or number of restarts.
Budget: a request (or a batch) is sent only after its worst case (prompt tokens + max_tokens x completions,
priced for the transport) is reserved against what is left; the API's usage settles it.
"""

from __future__ import annotations

from alpaca_ds.generate.config import GenerateConfig
from alpaca_ds.generate.dryrun import dry_run, format_dry_run  # noqa: F401 - the command's other entry
from alpaca_ds.generate.processor import Processor, alpaca_record, process_in_order  # noqa: F401
from alpaca_ds.generate.result import GenerateResult
from alpaca_ds.generate.rundir import ACCEPTED, LEDGER, RunDir  # noqa: F401
from alpaca_ds.generate.setup import prepare


def run(cfg: GenerateConfig, cancel_batches: bool = False) -> GenerateResult:
    """Generate until num_instructions are accepted (or the budget, max_requests or a signal stops it).
    `cancel_batches` (batch transport): cancel the batches an earlier run left running, collect what they
    answered, and stop."""
    setup = prepare(cfg)
    rd = RunDir(setup)
    try:
        if cfg.api.transport == "batch":
            from alpaca_ds.generate.batch import BatchGenerator

            return BatchGenerator(rd, cancel=cancel_batches).run()
        from alpaca_ds.generate.online import OnlineGenerator

        return OnlineGenerator(rd).run()
    finally:
        rd.close()

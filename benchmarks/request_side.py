"""`alpaca-ds generate` with its processing replaced by a stub that only counts each answer: the request side
alone (the event loop, the openai client, the ledger's fsyncs, and the simulator on the same machine). The
accepting case of bench_generate.py runs it beside the real command, so that the share of the bound that
processing costs is told apart from what the request side reaches on its own on this machine.

    python benchmarks/request_side.py generate --set ...   # the arguments of `alpaca-ds generate`
"""

from __future__ import annotations

from alpaca_ds.cli import main
from alpaca_ds.generate.processor import Processor


def count_only(self: Processor, index: int, choices: list[dict] | None) -> list[dict]:
    """Processor._process without parsing, filtering or de-duplicating: nothing is accepted."""
    if choices is None:
        self.requests_failed += 1
    else:
        self.requests_ok += 1
    return []


if __name__ == "__main__":
    Processor._process = count_only
    main()

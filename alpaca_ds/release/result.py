"""What the `alpaca-ds release` stages return: the folder written, its index or provenance chain, its summary line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightsResult:
    """A weight diff written (`release diff`) or a tuned model recovered from one (`release recover`)."""

    out: str
    index: dict  # the diff's index file: per-tensor checksums, shapes, dtypes, and the combined sha256
    recovered: bool = False
    exit_code: int = 0

    def summary(self) -> str:
        tensors, sha = len(self.index["tensors"]), self.index["sha256"]
        if self.recovered:
            return f"recovered {self.out}: {tensors} tensors, bit-identical to the tuned model (sha256 {sha})"
        return f"wrote {self.out}: {tensors} tensors, tuned weights sha256 {sha}"


@dataclass(frozen=True)
class CardsResult:
    """MODEL_CARD.md and DATA_CARD.md written from a run's provenance chain."""

    out: str
    chain: dict  # the provenance chain the cards were written from, with its checks
    exit_code: int = 0

    def summary(self) -> str:
        bad = [name for name, ok in self.chain["checks"].items() if not ok]
        return f"wrote MODEL_CARD.md and DATA_CARD.md in {self.out}" + (
            f"; WARNING: {', '.join(bad)}: no" if bad else ""
        )

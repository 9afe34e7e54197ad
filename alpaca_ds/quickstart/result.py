"""What `alpaca-ds quickstart` returns: how it ended, the steps it ran and skipped, and its summary line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuickstartResult:
    exit_code: int  # 0 done, 130 interrupted
    message: str  # why it stopped ("" when done)
    report: str | None  # report.md, when done
    seconds: float  # this invocation
    ran: list[str]
    skipped: list[str]
    step_seconds: float = 0.0  # over all the steps, earlier runs' included

    def summary(self) -> str:
        """The report line when done, else why it stopped."""
        if self.exit_code:
            return f"stopped: {self.message}"
        return (
            f"report: {self.report} ({self.seconds:.0f} s{' this time' if self.skipped else ''}; "
            f"{self.step_seconds:.0f} s over the steps)"
        )

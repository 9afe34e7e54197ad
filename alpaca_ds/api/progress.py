"""The progress line on stderr (a tqdm bar) and messages printed around it, for every run that calls an API."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=0.5
            )

    def say(self, message: str) -> None:
        """A line for the user, printed above the bar (or alone when there is none)."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def update(self, n: int = 1, status: str | None = None) -> None:
        if self.bar is not None:
            if n:
                self.bar.update(n)
            if status is not None:
                self.bar.set_postfix_str(status, refresh=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

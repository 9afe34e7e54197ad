"""One process at a time per folder: an exclusive lock file that the kernel releases however the holder dies."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

from alpaca_ds.common.errors import UserError


def exclusive(folder: Path, command: str) -> FileLock:
    """Hold FOLDER/.lock (release it with .release(), or use as a context manager); a UserError when another
    `command` holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"{folder}: another `{command}` is running on this folder") from None
    return lock

"""Append-only JSONL files that survive a kill at any moment.

A batch of lines is written with one write() and fsync'd before anyone waiting on it goes on, so what is on
disk is whole lines plus, after a kill mid-write, at most one torn last line. Reading tolerates exactly that: a
torn last line is dropped and the file is cut back to the last complete line before anything is appended;
damage anywhere else is an error.

Group commit: `commit()` queues a line and waits until it is durable; everything queued while the previous
batch is being written (or in one turn of the event loop) is written and fsync'd at once, so many requests in
flight share an fsync. The write and the fsync run in a thread of the journal's own, one batch at a time, in
the order queued: an fsync takes milliseconds, which the event loop spends on other requests instead of waiting.
A line's future is done only once its batch is on disk. `append()` is the synchronous form (startup,
cancellation paths).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import orjson

from alpaca_ds.common.errors import UserError


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(objects, byte length of the complete part). A missing file is empty. Reads line by line."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return [], 0
    objects = []
    good = 0
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):  # a line torn before its newline was written: the kill's mark
                break
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                raise UserError(
                    f"{path}:{lineno}: damaged line ({e}); this file is append-only and written "
                    "with fsync, so something else changed it. Restore it or use a new out_dir."
                ) from None
            objects.append(obj)
            good += len(line)
    return objects, good


def encode(obj: dict) -> bytes:
    """One line: compact JSON, UTF-8 as it is. orjson writes it 20-80x faster than json (a ledger line holds a
    whole answer; accepted.jsonl a record per instruction, written while the request loop waits for the GIL);
    json takes what orjson refuses (an integer beyond 64 bits, a key that is not a string)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class Journal:
    """An append-only JSONL file, opened after cutting off a torn last line."""

    def __init__(self, path: Path, good_length: int):
        self.path = path
        with open(path, "ab") as f:
            if f.tell() > good_length:
                f.truncate(good_length)
                f.flush()
                os.fsync(f.fileno())
        self._f = open(path, "ab", buffering=0)
        self._lock = threading.Lock()  # one writer at a time: the flusher thread or a sync append
        self._pending: list[tuple[bytes, asyncio.Future | None]] = []
        self._scheduled = False
        self._writing: asyncio.Future | None = None  # the batch being written by the writer thread
        self._writer = None  # a one-thread executor, started on the first queued line

    def _write(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[self._f.write(view) :]
            os.fsync(self._f.fileno())

    def append(self, obj: dict) -> None:
        """Write one line now and fsync it (blocks)."""
        self._write(encode(obj))

    def append_many(self, objs: list[dict]) -> None:
        if objs:
            self._write(b"".join(encode(o) for o in objs))

    def enqueue(self, obj: dict, wait: bool = True) -> asyncio.Future | None:
        """Queue a line; the returned future is done once it is on disk.

        Lines queued while a batch is being written (and during one turn of the event loop) go out together with
        one write() and one fsync (group commit): under load many requests share an fsync, and a slow disk only
        makes the batches bigger."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future() if wait else None
        self._pending.append((encode(obj), fut))
        if not self._scheduled and self._writing is None:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    async def commit(self, obj: dict) -> None:
        """Queue a line and wait until it is durable."""
        await self.enqueue(obj)

    def _flush(self) -> None:
        """Hand what is queued to the writer thread (on the loop), unless a batch is being written: its end does."""
        self._scheduled = False
        if self._writing is not None or not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._writer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._writer = ThreadPoolExecutor(1, thread_name_prefix="journal")
        loop = asyncio.get_running_loop()
        self._writing = loop.run_in_executor(self._writer, self._write, b"".join(line for line, _ in batch))
        self._writing.add_done_callback(lambda done: self._written(done, batch))

    def _written(self, done: asyncio.Future, batch: list) -> None:
        self._writing = None
        e = done.exception() if not done.cancelled() else RuntimeError("journal write stopped")
        for _, fut in batch:
            if fut is not None and not fut.done():
                if e is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(e if isinstance(e, Exception) else RuntimeError("journal write stopped"))
        if self._pending:  # queued while this batch was written: the next batch
            self._flush()
        if e is not None:
            raise e

    async def drain(self) -> None:
        """Wait until everything queued now is on disk."""
        while self._writing is not None or self._pending:
            if self._writing is None:
                self._flush()
            await asyncio.wait([self._writing])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._pending:  # queued after the loop ended (should not happen): write it rather than lose it
            self._write(b"".join(line for line, _ in self._pending))
            self._pending = []
        self._f.close()

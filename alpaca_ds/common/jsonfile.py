"""The one reader of JSON-list and JSONL files (Alpaca records, seed tasks, eval sets, outputs, annotations).

`read_objects` yields every value in file order with where it stands (`file:line` for JSONL, `file: record i`
for a JSON list), streaming either way (a JSON list through ijson), so a 52K-record file never sits in memory
twice. A JSONL line that cannot be read (not UTF-8, invalid JSON) comes out as a `Bad`, which the caller may skip
(`data build --skip-invalid`) or raise; a JSON list cannot be read past broken syntax, so that raises at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson

from alpaca_ds.common.errors import UserError


@dataclass(frozen=True)
class Bad:
    """A JSONL line that could not be read; `torn` when it is the last line and has no newline (a write cut
    short by a kill, which readers of files still being appended to may ignore)."""

    where: str
    problem: str
    torn: bool = False

    def error(self) -> UserError:
        return UserError(f"{self.where}: {self.problem}")


def read_objects(path: str | Path, what: str = "input", hint: str = "") -> Iterator[tuple[str, Any] | Bad]:
    """(where, value) for each value of a JSON list or JSONL file, or a Bad for an unreadable JSONL line."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read {what}: {e.strerror or e}{hint}") from None
    with f:
        first = _first_char(f)
        if first == b"[":
            yield from _json_list(path, f)
        elif first == b"{":
            yield from _jsonl(path, f)
        elif first == b"":
            raise UserError(f"{path}: the {what} is empty{hint}")
        else:
            raise UserError(
                f"{path}: neither a JSON list nor JSONL (one JSON object per line); it starts with {first!r}{hint}"
            )


def read_all(path: str | Path, what: str = "input", hint: str = "") -> list[tuple[str, dict]]:
    """Every (where, object) of the file; the first unreadable line or non-object value raises UserError."""
    out = []
    for item in read_objects(path, what, hint):
        if isinstance(item, Bad):
            raise item.error()
        where, obj = item
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        out.append(item)
    return out


def _first_char(f) -> bytes:
    while (c := f.read(1)) and c in b" \t\r\n\xef\xbb\xbf":
        pass
    f.seek(0)
    return c


def _jsonl(path: Path, f) -> Iterator[tuple[str, Any] | Bad]:
    for lineno, raw in enumerate(f, start=1):
        where = f"{path}:{lineno}"
        torn = not raw.endswith(b"\n")
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            yield Bad(where, f"not UTF-8 (byte {e.start} of the line is {raw[e.start : e.start + 1]!r})", torn)
            continue
        if not text.strip():
            continue
        try:
            yield where, json.loads(text)
        except json.JSONDecodeError as e:
            yield Bad(where, f"invalid JSON at column {e.colno}: {e.msg}", torn)


def _json_list(path: Path, f) -> Iterator[tuple[str, Any]]:
    index = 0  # the value being parsed
    try:
        for obj in ijson.items(f, "item", use_float=True):
            yield f"{path}: record {index}", obj
            index += 1
    except ijson.JSONError as e:
        raise UserError(
            f"{path}: record {index}: invalid JSON: {_first_line(e)}; a JSON list cannot be read past "
            "broken syntax, so fix the file (or convert it to JSONL to skip bad lines)"
        ) from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: record {index}: not UTF-8 ({e.reason}); re-encode the file as UTF-8") from None


def _first_line(e: Exception) -> str:
    msg = e.args[0] if e.args else ""
    msg = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)
    return msg.strip().splitlines()[0] if msg.strip() else type(e).__name__

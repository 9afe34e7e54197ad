"""Reading Alpaca-format records incrementally from a JSON list or JSONL, with errors that say where.

A record is `{"instruction": str, "input": str, "output": str}`; `input` may be absent (it is then "", as in
Alpaca's train.py) and extra keys are ignored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ijson

from alpaca_ds.common.errors import UserError


@dataclass(frozen=True)
class Invalid:
    """A record that cannot be used, where it is, and why."""
    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


Record = tuple[int, str, str, str]  # (record index, instruction, input, output)


def read_records(path: str | Path) -> Iterator[Record | Invalid]:
    """Yield each record in file order, or an `Invalid` for one that can be skipped.

    Damage that leaves the rest of the file unreadable (broken syntax inside a JSON list) raises UserError.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot open input: {e.strerror or e}") from None
    with f:
        first = _first_char(f)
        if first == b"[":
            yield from _read_json_list(path, f)
        elif first == b"{":
            yield from _read_jsonl(path, f)
        elif first == b"":
            raise UserError(f"{path}: the input is empty")
        else:
            raise UserError(f"{path}: neither a JSON list of records nor JSONL (one JSON object per line); "
                            f"it starts with {first!r}")


def _first_char(f) -> bytes:
    while (c := f.read(1)) and c in b" \t\r\n\xef\xbb\xbf":
        pass
    f.seek(0)
    return c


def _read_jsonl(path: Path, f) -> Iterator[Record | Invalid]:
    index = 0
    for lineno, raw in enumerate(f, start=1):
        where = f"{path}:{lineno}"
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            yield Invalid(where, f"not UTF-8 (byte {e.start} of the line is {raw[e.start:e.start + 1]!r})")
            index += 1
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield Invalid(where, f"invalid JSON at column {e.colno}: {e.msg}")
        else:
            yield _validate(obj, index, where)
        index += 1


def _read_json_list(path: Path, f) -> Iterator[Record | Invalid]:
    index = 0  # the record being parsed
    try:
        for obj in ijson.items(f, "item", use_float=True):
            yield _validate(obj, index, f"{path}: record {index}")
            index += 1
    except ijson.JSONError as e:
        raise UserError(f"{path}: record {index}: invalid JSON: {_first_line(e)}; a JSON list cannot be read past "
                        "broken syntax, so fix the file (or convert it to JSONL to skip bad lines)") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: record {index}: not UTF-8 ({e.reason}); re-encode the file as UTF-8") from None


def _first_line(e: Exception) -> str:
    msg = e.args[0] if e.args else ""
    msg = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)
    return msg.strip().splitlines()[0] if msg.strip() else type(e).__name__


def _validate(obj, index: int, where: str) -> Record | Invalid:
    if not isinstance(obj, dict):
        return Invalid(where, f"expected an object with instruction/input/output, got {type(obj).__name__}")
    for key in ("instruction", "output"):
        if key not in obj:
            return Invalid(where, f"missing key {key!r} (keys present: {', '.join(map(repr, obj)) or 'none'})")
    for key in ("instruction", "input", "output"):
        if key in obj and not isinstance(obj[key], str):
            return Invalid(where, f"{key!r} must be a string, got {type(obj[key]).__name__}")
    return index, obj["instruction"], obj.get("input", ""), obj["output"]

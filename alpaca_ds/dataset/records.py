"""Reading Alpaca-format records incrementally from a JSON list or JSONL, with errors that say where.

A record is `{"instruction": str, "input": str, "output": str}`; `input` may be absent (it is then "", as in
Alpaca's train.py) and extra keys are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alpaca_ds.common.jsonfile import Bad, read_objects


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
    for index, item in enumerate(read_objects(path)):
        if isinstance(item, Bad):
            yield Invalid(item.where, item.problem)
        else:
            yield _validate(item[1], index, item[0])


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

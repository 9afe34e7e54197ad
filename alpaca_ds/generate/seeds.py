"""Seed tasks in the self-instruct format, read with errors that name the file and line.

One JSON object per line: `{"id", "name", "instruction", "instances": [{"input", "output"}, ...],
"is_classification"}` — this project's seeds/seed_tasks.jsonl and the original 175 of self-instruct/Alpaca
alike. As in Alpaca, a task's first instance is its in-context example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.jsonfile import Bad, read_objects


@dataclass(frozen=True)
class Example:
    """An Alpaca-format record: what a prompt shows and what the teacher writes."""

    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class SeedTask:
    id: str
    name: str
    instruction: str
    instances: tuple[Example, ...]
    is_classification: bool

    @property
    def example(self) -> Example:
        """The record Alpaca builds from a seed task: its instruction with the first instance."""
        first = self.instances[0]
        return Example(self.instruction, first.input, first.output)


def load_seed_tasks(path: str | Path) -> list[SeedTask]:
    tasks: list[SeedTask] = []
    ids: dict[str, str] = {}
    hint = " (set seed_tasks to a self-instruct JSONL file, e.g. seeds/seed_tasks.jsonl)"
    for item in read_objects(path, "seed tasks", hint):
        if isinstance(item, Bad):
            raise item.error()
        where, obj = item
        task = _validate(obj, where)
        if task.id in ids:
            raise UserError(f"{where}: id {task.id!r} repeats {ids[task.id]}")
        ids[task.id] = f"line {where.rsplit(':', 1)[1]}" if where.rsplit(":", 1)[1].isdigit() else where
        tasks.append(task)
    if not tasks:
        raise UserError(f"{path}: no seed tasks in the file")
    return tasks


def _validate(obj, where: str) -> SeedTask:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a seed task must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("id", "name", "instruction", "instances", "is_classification") if k not in obj]
    if missing:
        raise UserError(
            f"{where}: missing key(s) {', '.join(map(repr, missing))} (self-instruct format: "
            '{"id", "name", "instruction", "instances": [{"input", "output"}], "is_classification"})'
        )
    for key in ("id", "name", "instruction"):
        if not isinstance(obj[key], str):
            raise UserError(f"{where}: {key!r} must be a string, got {type(obj[key]).__name__}")
    if not obj["instruction"].strip():
        raise UserError(f"{where}: 'instruction' is empty")
    if not isinstance(obj["is_classification"], bool):
        raise UserError(f"{where}: 'is_classification' must be true or false")
    instances = obj["instances"]
    if not isinstance(instances, list) or not instances:
        raise UserError(f'{where}: \'instances\' must be a non-empty list of {{"input", "output"}} objects')
    examples = []
    for j, inst in enumerate(instances):
        if (
            not isinstance(inst, dict)
            or not isinstance(inst.get("input"), str)
            or not isinstance(inst.get("output"), str)
        ):
            raise UserError(f"{where}: instances[{j}] must be an object with string 'input' and 'output'")
        examples.append(Example(obj["instruction"], inst["input"], inst["output"]))
    return SeedTask(obj["id"], obj["name"], obj["instruction"], tuple(examples), obj["is_classification"])

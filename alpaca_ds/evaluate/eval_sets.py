"""Eval sets and model-output files in AlpacaEval's shapes.

An eval item keeps what the prompt is built from (instruction and input, for Alpaca's two templates) apart
from the `instruction` written to outputs, which is AlpacaEval's: for the self-instruct set that is the
instruction and its input joined by a blank line, so our outputs pair one to one with AlpacaEval's reference
outputs (its 252 `selfinstruct` items are these 252 tasks, in order).

Named sets, found under `data_dir` (default ../shared/data):
  selfinstruct  self-instruct/user_oriented_instructions.jsonl  (252; Alpaca's human evaluation)
  alpaca_eval   alpaca_eval/text_davinci_003_outputs.json        (805; also text-davinci-003's reference outputs)
Any other value is a file: a JSON list or JSONL of records with `instruction` (and optionally `input`,
`dataset`), or self-instruct tasks (`instruction` + `instances[0].input`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.jsonfile import read_all

NAMED = {
    "selfinstruct": (
        "self-instruct/user_oriented_instructions.jsonl",
        "yizhongw/self-instruct, human_eval/user_oriented_instructions.jsonl",
    ),
    "alpaca_eval": (
        "alpaca_eval/text_davinci_003_outputs.json",
        "tatsu-lab/alpaca_eval, results/text_davinci_003/model_outputs.json",
    ),
}
OUTPUT_KEYS = ("dataset", "instruction", "output", "generator")  # AlpacaEval's model_outputs.json, in its order


@dataclass(frozen=True)
class EvalItem:
    dataset: str
    instruction: str  # AlpacaEval's instruction (what outputs and judges see)
    prompt_instruction: str  # what Alpaca's template gets as instruction ...
    input: str = ""  # ... and as input

    def alpaca_prompt(self) -> str:
        from alpaca_ds.dataset.template import format_prompt

        return format_prompt(self.prompt_instruction, self.input)


def merged_instruction(instruction: str, input: str) -> str:
    """AlpacaEval's instruction for a task with an input: the two joined by a blank line."""
    return f"{instruction}\n\n{input}" if input else instruction


def set_path(name: str, data_dir: str | Path) -> Path:
    if name in NAMED:
        path = Path(data_dir).expanduser() / NAMED[name][0]
        if not path.is_file():
            raise UserError(
                f"eval set {name!r}: {path} not found. Get it from {NAMED[name][1]} and put it there, "
                f"set data_dir to the folder that holds {NAMED[name][0]}, or pass the file itself "
                "as --eval-set FILE"
            )
        return path
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"eval set {name!r}: not one of {', '.join(NAMED)} and not a file")
    return path


def _text(rec: dict, key: str, where: str, required: bool = True) -> str:
    value = rec.get(key, None if required else "")
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        what = "missing" if key not in rec else f"a {type(value).__name__}, not a string"
        raise UserError(f"{where}: key {key!r} is {what}")
    return value


def load_eval_set(name: str, data_dir: str | Path = "../shared/data") -> list[EvalItem]:
    path = set_path(name, data_dir)
    default_dataset = name if name in NAMED else path.stem
    items = []
    for where, rec in read_all(path, "eval set"):
        instruction = _text(rec, "instruction", where)
        if "instances" in rec:  # a self-instruct task: its first instance's input
            instances = rec["instances"]
            if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
                raise UserError(f"{where}: 'instances' must be a non-empty list of {{input, output}} objects")
            inp = _text(instances[0], "input", where + " instances[0]", required=False)
        else:
            inp = _text(rec, "input", where, required=False)
        dataset = rec.get("dataset") or default_dataset
        items.append(EvalItem(str(dataset), merged_instruction(instruction, inp), instruction, inp))
    if not items:
        raise UserError(f"{path}: no records")
    return items


def reference_outputs(name: str, data_dir: str | Path = "../shared/data") -> list[dict]:
    """text-davinci-003's outputs for a named set, from AlpacaEval's reference file (the 805, or its 252)."""
    if name not in NAMED:
        raise UserError(f"reference outputs exist for the named sets ({', '.join(NAMED)}), not for {name!r}")
    ref = read_outputs(set_path("alpaca_eval", data_dir))
    if name == "alpaca_eval":
        return ref
    wanted = load_eval_set(name, data_dir)
    by_instruction: dict[str, list[dict]] = {}
    for rec in ref:
        by_instruction.setdefault(rec["instruction"], []).append(rec)
    out = []
    for item in wanted:
        matches = by_instruction.get(item.instruction)
        if not matches:
            raise UserError(f"the AlpacaEval reference has no output for {item.instruction[:80]!r}")
        out.append(matches.pop(0))
    return out


def read_outputs(path: str | Path) -> list[dict]:
    """A model_outputs.json (JSON list or JSONL) with at least `instruction` and `output` per record."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such outputs file (write one with `alpaca-ds evaluate answer`)")
    out = []
    for where, rec in read_all(path, "eval set"):
        _text(rec, "instruction", where)
        _text(rec, "output", where)
        out.append(rec)
    if not out:
        raise UserError(f"{path}: no outputs")
    return out


def output_record(item: EvalItem, output: str, generator: str) -> dict:
    return {"dataset": item.dataset, "instruction": item.instruction, "output": output, "generator": generator}


# the keys of an AlpacaEval annotation that a pair fills, in AlpacaEval's order
ANNOTATION_KEYS = ("dataset", "instruction", "output_1", "generator_1", "output_2", "generator_2")


@dataclass(frozen=True)
class Pair:
    index: int
    dataset: str
    instruction: str
    output_1: str
    output_2: str
    generator_1: str
    generator_2: str

    def annotation(self) -> dict:
        """The AlpacaEval annotation keys this pair fills (preference is added by whoever judges it)."""
        return {key: getattr(self, key) for key in ANNOTATION_KEYS}


def pair_outputs(a_path: str | Path, b_path: str | Path, limit: int | None = None) -> list[Pair]:
    """Pairs of the instructions both files hold, in A's order, matched by instruction as AlpacaEval merges
    outputs. One file may hold more than the other (the 805 reference against answers to its 252 self-instruct
    tasks); if each holds instructions the other lacks, they answer different sets, which is refused."""
    a, b = read_outputs(a_path), read_outputs(b_path)
    by_instruction: dict[str, list[dict]] = {}
    for rec in b:
        by_instruction.setdefault(rec["instruction"], []).append(rec)
    pairs, missing = [], []
    for rec in a:
        matches = by_instruction.get(rec["instruction"])
        if not matches:
            missing.append(rec["instruction"])
            continue
        other = matches.pop(0)
        pairs.append(
            Pair(
                len(pairs),
                str(rec.get("dataset") or other.get("dataset") or ""),
                rec["instruction"],
                rec["output"],
                other["output"],
                str(rec.get("generator") or Path(a_path).stem),
                str(other.get("generator") or Path(b_path).stem),
            )
        )
    extra_b = sum(len(v) for v in by_instruction.values())
    if not pairs or (missing and extra_b):
        first = f" (first missing from {b_path}: {missing[0][:80]!r})" if missing else ""
        raise UserError(
            f"{a_path} and {b_path} answer different instructions: {len(pairs)} in common, {len(missing)} "
            f"only in the first, {extra_b} only in the second{first}; answer the same eval set with "
            "both models"
        )
    return pairs[:limit] if limit else pairs

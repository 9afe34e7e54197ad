"""The generation prompt and the parsing of the teacher's answer, in Alpaca's scheme.

A prompt is the template (alpaca_ds/generate/prompt.txt, or `prompt_template`) followed by k numbered seed
examples and the start of task k+1:

    ###
    1. Instruction: <seed instruction>
    1. Input:
    <seed input, or <noinput>>
    1. Output:
    <seed output>
    ###
    ...
    ###
    4. Instruction:

The teacher continues the list; generation stops at task `num_tasks` (stop sequences "\\n20" and "20.", as in
Alpaca). Request i's examples are drawn by an RNG seeded with (seed, i) alone, so a prompt never depends on
what ran before it, on timing, or on a restart.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.generate.seeds import Example

PLACEHOLDER = "{num_tasks}"


def default_template_path() -> Path:
    return Path(str(resources.files("alpaca_ds.generate") / "prompt.txt"))


def load_template(path: str | Path | None) -> str:
    path = Path(path) if path else default_template_path()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the prompt template: {getattr(e, 'strerror', None) or e}") from None
    if not text.strip():
        raise UserError(f"{path}: the prompt template is empty")
    return text


def encode_prompt(template: str, examples: list[Example], num_tasks: int) -> str:
    """Template + numbered examples + the opening of the next task (Alpaca's encode_prompt, our template)."""
    prompt = template.replace(PLACEHOLDER, str(num_tasks)).rstrip() + "\n"
    for idx, ex in enumerate(examples, start=1):
        instruction = re.sub(r"\s+", " ", ex.instruction).strip().rstrip(":")
        inp = "<noinput>" if ex.input.lower() == "" else ex.input
        prompt += f"###\n{idx}. Instruction: {instruction}\n{idx}. Input:\n{inp}\n{idx}. Output:\n{ex.output}\n"
    prompt += f"###\n{len(examples) + 1}. Instruction:"
    return prompt


def request_rng(seed: int, index: int) -> random.Random:
    # a string seed is hashed with sha512 by random.Random: the same stream on every machine and Python run
    return random.Random(f"alpaca-ds/generate/{seed}/{index}")


def request_prompts(
    template: str, seeds: list[Example], k: int, num_tasks: int, seed: int, index: int, prompts: int
) -> list[str]:
    """The prompts of request `index`: each shows k seed examples sampled without replacement (Alpaca)."""
    rng = request_rng(seed, index)
    return [encode_prompt(template, rng.sample(seeds, k), num_tasks) for _ in range(prompts)]


def stop_sequences(num_tasks: int) -> list[str]:
    # Alpaca's ["\n20", "20.", "20."] without the repeat (the API takes at most 4)
    return [f"\n{num_tasks}", f"{num_tasks}."]


def logit_bias(enc) -> dict[str, int]:
    """Ban end-of-text so the teacher writes the whole list (Alpaca: {"50256": -100} for p50k_base)."""
    return {str(enc.eot_token): -100}


@dataclass(frozen=True)
class Candidate:
    instruction: str
    input: str
    output: str


def parse_response(
    text: str, finish_reason: str | None, k: int, chat: bool = False
) -> tuple[list[Candidate], dict[str, int]]:
    """Alpaca's post_process_gpt3_response, parsing only: the candidates, and counts of blocks dropped by reason.

    Blocks are split by "###"; block j must read "N. Instruction: ... N. Input: ... N. Output: ..." with
    N = k + 1 + j; an input of <noinput> becomes "". When the answer was cut off by length its last block is
    dropped. A chat model often restates "4. Instruction:" that the prompt already opened; that is removed.
    """
    dropped: dict[str, int] = {}
    opening = f"{k + 1}. Instruction:"
    if chat:
        text = text.lstrip()
        if text.startswith(opening):
            text = text[len(opening) :]
    blocks = re.split("###", opening + text)
    out: list[Candidate] = []
    for pos, block in enumerate(blocks):
        if pos == len(blocks) - 1 and finish_reason == "length":
            if block.strip():
                dropped["cut_off"] = dropped.get("cut_off", 0) + 1
            continue
        num = pos + k + 1
        parts = re.split(rf"{num}\.\s+(Instruction|Input|Output):", block)
        if len(parts) != 7 or parts[1::2] != ["Instruction", "Input", "Output"]:
            if block.strip():
                dropped["unparseable"] = dropped.get("unparseable", 0) + 1
            continue
        inp = parts[4].strip()
        out.append(Candidate(parts[2].strip(), "" if inp.lower() == "<noinput>" else inp, parts[6].strip()))
    return out, dropped

"""Alpaca's prompt template, byte for byte, and its label convention."""

from __future__ import annotations

IGNORE_INDEX = -100
DEFAULT_PAD_TOKEN = "[PAD]"
DEFAULT_EOS_TOKEN = "</s>"
DEFAULT_BOS_TOKEN = "<s>"
DEFAULT_UNK_TOKEN = "<unk>"

PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}


def format_prompt(instruction: str, input: str = "") -> str:
    """The prompt Alpaca trains on: the input variant when `input != ""`, ending in `### Response:`."""
    if input != "":
        return PROMPT_DICT["prompt_input"].format_map({"instruction": instruction, "input": input})
    return PROMPT_DICT["prompt_no_input"].format_map({"instruction": instruction})

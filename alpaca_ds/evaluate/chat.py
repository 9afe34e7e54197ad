"""An interactive terminal chat with a fine-tuned model, streaming its answer as it is generated.

    alpaca-ds chat --model runs/tiny/final
    alpaca-ds chat --model runs/alpaca-7b/final --set decoding.temperature=0 --set decoding.max_new_tokens=256

Each line you type is an instruction, wrapped in Alpaca's template (Alpaca answers single turns, so each
instruction stands alone). Commands: `/input TEXT` gives the next instruction an input (the template's input
variant); a line ending in `\\` continues on the next line; `/quit` or Ctrl-D leaves.
"""

from __future__ import annotations

import sys

from alpaca_ds.dataset.template import format_prompt
from alpaca_ds.evaluate.config import ServeConfig
from alpaca_ds.evaluate.local import Answer, LocalModel, model_name

HELP = (
    "Type an instruction and press Enter. /input TEXT sets an input for the next instruction; end a line with "
    "\\ to continue it; /quit or Ctrl-D leaves."
)


def run(cfg: ServeConfig, stdin=None, stdout=None) -> None:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() and stdout.isatty()
    model = LocalModel(cfg.model, cfg.dtype, cfg.device)
    stdout.write(
        f"alpaca-ds chat with {model_name(cfg.model)} (temperature {cfg.decoding.temperature:g}, "
        f"top_p {cfg.decoding.top_p:g}, at most {cfg.decoding.max_new_tokens} tokens). {HELP}\n"
    )
    pending_input = ""

    def read(prompt: str) -> str | None:
        if interactive:
            try:
                return input(prompt)
            except EOFError:
                return None
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        return None if line == "" else line.rstrip("\n")

    while True:
        line = read(">>> ")
        if line is None:
            stdout.write("\n")
            break
        while line.endswith("\\"):
            more = read("... ")
            line = line[:-1] + "\n" + (more or "")
            if more is None:
                break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/help":
            stdout.write(HELP + "\n")
            continue
        if text.startswith("/input"):
            pending_input = text[len("/input") :].strip()
            stdout.write(f"(input set for the next instruction: {len(pending_input)} characters)\n")
            continue
        prompt = format_prompt(text, pending_input)
        pending_input = ""
        try:
            for piece in model.stream(prompt, cfg.decoding):
                if isinstance(piece, Answer):
                    note = " [cut at max_new_tokens]" if piece.finish_reason == "length" else ""
                    stdout.write(f"{note}\n")
                else:
                    stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write("\n(interrupted)\n")

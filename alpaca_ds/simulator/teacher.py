"""What the SIMULATOR writes as a teacher: tasks in Alpaca's response format. It is not a language model.

It recombines the content of seed tasks (pieces of two seed instructions around a few words from the seeds'
vocabulary; inputs and outputs from other seeds), with a share (`noise`) of tasks of the kinds Alpaca's filters
reject (seed repeats, near repeats, too short, "Write a program", blacklisted words, odd first characters,
misnumbered blocks), deterministically: the answer is a function of (model, prompt, choice) and the seed only,
never of timing, order or transport. A judge prompt gets a verdict instead (judge.py).
"""

from __future__ import annotations

import hashlib
import random
import re

from alpaca_ds.api.tokens import token_counter
from alpaca_ds.generate.seeds import Example
from alpaca_ds.simulator.judge import judge_verdict

DEFAULT_MODEL = "gpt-3.5-turbo-instruct"
# kinds of bad task the simulator writes on purpose, so every filter has work
NOISE_KINDS = (
    "exact_seed",
    "near_seed",
    "short",
    "write_program",
    "blacklisted",
    "punctuation",
    "non_ascii",
    "misnumbered",
)

_OPEN_TASK = re.compile(r"(\d+)\. Instruction:\s*$")


class TeacherSim:
    """What the simulator writes: tasks for a generation prompt, a verdict for a judge prompt."""

    def __init__(self, seeds: list[Example], seed: int = 0, tasks: int = 20, noise: float = 0.2):
        self.seeds = seeds
        self.seed = seed
        self.tasks = tasks
        self.noise = noise
        self._encodings: dict[str, object] = {}
        words = set()
        for ex in seeds:
            words.update(w for w in re.findall(r"[A-Za-z]+", f"{ex.instruction} {ex.output}") if len(w) > 2)
        self.vocab = sorted(words)
        # the seeds' parts as the tasks use them, split once (drawn with the same RNG calls as the seeds themselves)
        self._vocab_lower = [w.lower() for w in self.vocab]
        self._instruction_words = [ex.instruction.split() for ex in seeds]
        self._inputs = [ex.input.strip() for ex in seeds]
        self._output_words = [ex.output.split() for ex in seeds]

    # ---- content ------------------------------------------------------------------------------------------------

    def _enc(self, model: str):
        if model not in self._encodings:
            from alpaca_ds.api.tokens import get_encoding

            try:
                self._encodings[model] = get_encoding(model)
            except Exception:  # an unknown model name: count with cl100k_base
                self._encodings[model] = get_encoding("gpt-3.5-turbo-instruct", "cl100k_base")
        return self._encodings[model]

    def _instruction(self, rng: random.Random) -> tuple[str, bool]:
        """(instruction, well-formed block?) — with probability `noise` a task of the kinds Alpaca filters out."""
        if rng.random() < self.noise:
            kind = rng.choice(NOISE_KINDS)
            seed_words = list(rng.choice(self._instruction_words))
            if kind == "exact_seed":
                return " ".join(seed_words), True
            if kind == "near_seed":  # one word changed: ROUGE-L must catch it
                seed_words[rng.randrange(len(seed_words))] = rng.choice(self._vocab_lower)
                return " ".join(seed_words), True
            if kind == "short":
                return " ".join(rng.choice(self.vocab) for _ in range(rng.randint(1, 3))), True
            base = self._instruction_plain(rng)
            if kind == "write_program":
                return "Write a program that " + base[0].lower() + base[1:], True
            if kind == "blacklisted":
                return f"{base} Then draw a {rng.choice(['graph', 'picture', 'map', 'diagram'])} of it.", True
            if kind == "punctuation":
                return f'"{base}"', True
            if kind == "non_ascii":
                return f"¿{base}", True
            return base, False  # misnumbered: the block cannot be parsed
        return self._instruction_plain(rng), True

    def _instruction_plain(self, rng: random.Random) -> str:
        a = rng.choice(self._instruction_words)
        b = rng.choice(self._instruction_words)
        head = a[: rng.randint(1, max(1, len(a) // 2))]
        tail = b[rng.randint(len(b) // 2, max(len(b) // 2, len(b) - 1)) :]
        vocab = self._vocab_lower
        middle = [rng.choice(vocab) for _ in range(rng.randint(2, 5))]
        return " ".join(head + middle + tail)

    def _task(self, rng: random.Random) -> tuple[str, str, str, bool]:
        inst, ok = self._instruction(rng)
        inp = rng.choice(self._inputs) if rng.random() < 0.4 else ""
        out_words = rng.choice(self._output_words)[: rng.randint(5, 60)]
        return inst, inp or "<noinput>", " ".join(out_words), ok

    def answer(self, model: str, prompt: str, choice: int, chat: bool) -> str:
        """The full answer to `prompt` before stop sequences and max_tokens are applied."""
        verdict = judge_verdict(prompt, self.vocab)
        if verdict is not None:  # a judge prompt: answered in judge mode
            return verdict
        rng = random.Random(f"{self.seed}/{model}/{choice}/{hashlib.sha256(prompt.encode()).hexdigest()}")
        # the prompt's last "N. Instruction:" (searched in its tail: the whole prompt is long)
        found = _OPEN_TASK.search(prompt, max(0, len(prompt) - 200))
        if found is not None and found.start() == max(0, len(prompt) - 200) > 0:
            found = _OPEN_TASK.search(prompt)  # the digits may start before the tail
        start = int(found.group(1)) if found else 1
        parts = []
        for num in range(start, max(start, self.tasks) + 1):
            inst, inp, out, ok = self._task(rng)
            label = f"{num}." if ok else f"{num})"
            body = f"{inst}\n{label} Input:\n{inp}\n{label} Output:\n{out}\n"
            if num > start:
                parts.append(f"###\n{num}. Instruction: {body}")
            else:  # a completion continues the prompt's open "N. Instruction:"; a chat reply restates it
                parts.append(f"{num}. Instruction: {body}" if chat else f" {body}")
        return "".join(parts)

    def finish(self, model: str, text: str, stop: list[str], max_tokens: int, cut: int | None) -> tuple[str, str, int]:
        """Apply stop sequences, then max_tokens (or a forced cut): (text, finish_reason, completion tokens)."""
        ends = [text.find(s) for s in stop if s and text.find(s) >= 0]
        if ends:
            text = text[: min(ends)]
        enc = self._enc(model)
        limit = max_tokens if cut is None else min(max_tokens, cut)
        used = token_counter(enc).count(text)  # exact, without encoding the lines of seeds seen before
        if used > limit:
            return enc.decode(enc.encode(text, disallowed_special=())[:limit]), "length", limit
        return text, "stop", used

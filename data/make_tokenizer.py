"""Train the tiny offline tokenizer of alpaca-ds.

Usage, from the repository root::

    python data/make_tokenizer.py

This trains a SentencePiece BPE model on the text of
``data/sample/alpaca_sample.json`` (every instruction, input and output string)
plus the fixed wording of the Alpaca prompt, and writes it to
``data/tokenizer/tokenizer.model``.

The trainer options follow LLaMA's tokenizer conventions: BPE with byte
fallback, ``<unk>``/``<s>``/``</s>`` at ids 0/1/2 and no pad piece, digits split
into single pieces, a dummy prefix space, no whitespace or Unicode
normalisation, and full character coverage. The vocabulary is tiny (about 1000
pieces, 256 of them byte-fallback pieces) because the model only exists so that
tests and offline runs have a real tokenizer to work with; it is not meant for
training a real model.

Training is deterministic: the sentences are fed in file order, nothing is
sampled or shuffled, and a single thread is used, so running the script twice
gives a byte-identical ``tokenizer.model``.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm

DATA_DIR = Path(__file__).resolve().parent
SAMPLE = DATA_DIR / "sample" / "alpaca_sample.json"
OUT_DIR = DATA_DIR / "tokenizer"

VOCAB_SIZE = 1000

# The fixed wording of the Alpaca prompt, so its words get their own pieces.
PROMPT_TEXT = [
    "Below is an instruction that describes a task, paired with an input that "
    "provides further context. Write a response that appropriately completes "
    "the request.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:",
    "### Input:",
    "### Response:",
]


def sentences(sample: Path) -> Iterator[str]:
    """Yield the training sentences in a fixed order.

    Multi-line strings are split into lines (newlines are left to byte
    fallback, as in LLaMA) and empty lines are skipped.
    """
    records = json.loads(sample.read_text(encoding="utf-8"))
    texts = list(PROMPT_TEXT)
    for rec in records:
        texts.extend(rec[key] for key in ("instruction", "input", "output"))
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def train(sample: Path = SAMPLE, vocab_size: int = VOCAB_SIZE) -> bytes:
    """Train the model in memory and return the serialized ``tokenizer.model``."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(sample),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        # Determinism: one thread, every sentence, in the given order.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="Alpaca-format JSON file")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where to write tokenizer.model")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args()

    model = train(args.sample, args.vocab_size)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "tokenizer.model"
    path.write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    print(f"wrote {path} ({len(model)} bytes, vocab size {sp.get_piece_size()})")


if __name__ == "__main__":
    main()

"""A fine-tuned model loaded from an exported HF folder, generating from Alpaca prompts: batched, or streamed.

The folder is what the trainer exports (RUN/final: config.json, *.safetensors, tokenizer with [PAD],
generation_config.json); any causal-LM folder that transformers loads works too (a tokenizer without a pad
token pads with its EOS). Prompts are tokenized as in training (the tokenizer's own BOS convention) and padded
on the left so every answer starts right after its prompt.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.evaluate.config import DecodingConfig

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_new_tokens)
    prompt_tokens: int
    completion_tokens: int
    prompt_truncated: bool = False


def model_name(folder: str | Path) -> str:
    """A readable name for a model folder: RUN/final -> RUN, otherwise the folder's own name."""
    path = Path(folder).expanduser().resolve()
    return path.parent.name if path.name == "final" and path.parent.name else path.name


def check_folder(folder: str | Path) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(
            f"model {str(folder)!r}: no such folder (an exported model: RUN/final of alpaca-ds train, "
            "or `alpaca-ds export CKPT OUT`)"
        )
    if not (path / "config.json").is_file():
        raise UserError(
            f"model {str(folder)!r}: no config.json; expected an exported HF folder (config.json, "
            "*.safetensors, tokenizer files), as alpaca-ds train writes to RUN/final"
        )
    return path


class LocalModel:
    def __init__(self, folder: str | Path, dtype: str = "auto", device: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = check_folder(folder)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise UserError(f"model {str(folder)!r}: cannot load its tokenizer: {e}") from None
        if dtype == "auto":  # bf16 matmuls are slow on most CPUs; a GPU runs the checkpoint's own dtype
            torch_dtype = torch.float32 if device == "cpu" else "auto"
        else:
            torch_dtype = getattr(torch, dtype)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise UserError(f"model {str(folder)!r}: cannot load its weights: {e}") from None
        self.model.to(device).eval()
        self.device = device
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        self.eos_ids = {tok.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        self.eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids.discard(None)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()  # one generate() at a time (the server's threads share the model)

    # ---- prompts ----------------------------------------------------------------------------------------------

    def encode(self, prompt: str, max_new_tokens: int) -> tuple[list[int], bool]:
        """Token ids of `prompt`, cut from the left (keeping the end, where the request is) if prompt + answer
        would not fit the model's positions."""
        ids = self.tokenizer(prompt)["input_ids"]
        if self.max_positions and len(ids) + max_new_tokens > self.max_positions:
            keep = max(1, self.max_positions - max_new_tokens)
            return ids[-keep:], True
        return ids, False

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _kwargs(self, d: DecodingConfig, max_new_tokens: int) -> dict:
        kw = dict(
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids) or None,
        )
        if d.temperature > 0:
            kw.update(do_sample=True, temperature=d.temperature, top_p=d.top_p, top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _finish(self, new_ids: list[int], stop: list[str]) -> tuple[str, str, int]:
        """(text, finish_reason, completion tokens) of generated ids: cut at EOS and at the first stop string."""
        cut = len(new_ids)
        reason = "length"
        for j, t in enumerate(new_ids):
            if t in self.eos_ids:
                cut, reason = j, "stop"
                break
        ids = [t for t in new_ids[:cut] if t != self.tokenizer.pad_token_id]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hit = first_stop(text, stop)
        if hit is not None:
            text, reason = text[:hit], "stop"
        return text, reason, cut + (1 if reason == "stop" and cut < len(new_ids) else 0)

    # ---- generation -------------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: list[str],
        decoding: DecodingConfig,
        max_new_tokens: int | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
        strip: bool = False,
    ) -> list[Answer]:
        """Answers to `prompts`, generated together in one left-padded batch (`strip`: without surrounding
        whitespace, as answers are stored)."""
        import torch

        max_new = max_new_tokens or decoding.max_new_tokens
        encoded = [self.encode(p, max_new) for p in prompts]
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in encoded], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in encoded], device=self.device)
        kwargs = self._kwargs(decoding, max_new)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        with self._lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        answers = []
        for row, (ids, truncated) in zip(out.tolist(), encoded):
            text, reason, used = self._finish(row[width:], stop or [])
            answers.append(Answer(text.strip() if strip else text, reason, len(ids), used, truncated))
        return answers

    def stream(
        self,
        prompt: str,
        decoding: DecodingConfig,
        max_new_tokens: int | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[str | Answer]:
        """Yield pieces of text as they are generated, then the whole Answer."""
        import torch
        from transformers import TextIteratorStreamer

        max_new = max_new_tokens or decoding.max_new_tokens
        ids, truncated = self.encode(prompt, max_new)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._kwargs(decoding, max_new)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        result: dict = {}

        def work():
            try:
                with self._lock, torch.no_grad():
                    if seed is not None:
                        torch.manual_seed(seed)
                    out = self.model.generate(
                        input_ids=torch.tensor([ids], device=self.device),
                        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                        streamer=streamer,
                        **kwargs,
                    )
                result["ids"] = out[0].tolist()[len(ids) :]
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                result["error"] = e
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        sent = ""
        holdback = max((len(s) for s in stop or []), default=1) - 1
        text = ""
        stopped = False
        for piece in streamer:
            text += piece
            hit = first_stop(text, stop or [])
            if hit is not None:
                stopped = True
                break
            safe = text[: len(text) - holdback] if holdback else text
            if len(safe) > len(sent):
                yield safe[len(sent) :]
                sent = safe
        if stopped:
            for _ in streamer:  # drain until generation ends (at the stop string, by stop_strings)
                pass
        thread.join()
        if "error" in result:
            raise result["error"]
        final, reason, used = self._finish(result["ids"], stop or [])
        if len(final) > len(sent) and final.startswith(sent):
            yield final[len(sent) :]
        yield Answer(final, reason, len(ids), used, truncated)

    async def astream(self, *args, **kwargs) -> AsyncIterator[str | Answer]:
        """stream(*args, **kwargs) on a worker thread, for an event loop that keeps serving other requests meanwhile."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def work():
            try:
                for piece in self.stream(*args, **kwargs):
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
            except BaseException as e:  # noqa: BLE001 - raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, e)
            loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=work, daemon=True).start()
        while (piece := await queue.get()) is not None:
            if isinstance(piece, BaseException):
                raise piece
            yield piece


def first_stop(text: str, stop: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None

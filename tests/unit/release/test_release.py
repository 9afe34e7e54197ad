"""Weight diff and recovery: bit-identical round trip, wrong bases refused, memory well under two copies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM

from alpaca_ds.common.errors import UserError
from alpaca_ds.release.weights import Weights, make_diff, recover
from helpers.evaluation import random_llama
from helpers.paths import ROOT


def tiny(seed: int, vocab: int = 1000, hidden: int = 64, layers: int = 2) -> LlamaForCausalLM:
    return random_llama(vocab, hidden=hidden, layers=layers, heads=4, kv_heads=2, seed=seed)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    base = tiny(0)
    base.save_pretrained(root / "base")
    tuned = tiny(0)
    tuned.resize_token_embeddings(1001, mean_resizing=False)  # Alpaca's [PAD]
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
        tuned.model.embed_tokens.weight[0] += 1e6  # a large update: float32 cannot hold it exactly
    tuned.to(torch.bfloat16).save_pretrained(root / "tuned")
    tiny(1).save_pretrained(root / "wrong")
    return root


def test_round_trip_is_bit_identical(models, tmp_path):
    index = make_diff(models / "base", models / "tuned", tmp_path / "diff").index
    assert index["tensors"]["model.embed_tokens.weight"]["added_rows"] == 1
    recover(models / "base", tmp_path / "diff", tmp_path / "recovered")
    tuned, got = Weights(models / "tuned"), Weights(tmp_path / "recovered")
    assert tuned.names() == got.names()
    for name in tuned.names():
        a, b = tuned.get(name), got.get(name)
        assert a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16)), name
    # the recovered folder is a model transformers loads, with the tuned config
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "recovered").config.vocab_size == 1001


def test_wrong_base_is_refused_naming_the_first_tensor(models, tmp_path):
    make_diff(models / "base", models / "tuned", tmp_path / "diff")
    first = sorted(json.loads((tmp_path / "diff" / "weight_diff.json").read_text())["tensors"])[0]
    with pytest.raises(UserError, match=rf"recovered tensor {first!r} does not match"):
        recover(models / "wrong", tmp_path / "diff", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    with pytest.raises(UserError, match="has shape .* the diff expects"):
        other = tiny(0, hidden=32)
        other.save_pretrained(tmp_path / "other")
        recover(tmp_path / "other", tmp_path / "diff", tmp_path / "out")


def test_existing_output_and_incomplete_diff_are_refused(models, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty"):
        make_diff(models / "base", models / "tuned", tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match="not a complete weight diff"):
        recover(models / "base", tmp_path / "half", tmp_path / "out")


@pytest.mark.slow  # measures peak memory (tests/README.md): ~9 CPU-seconds, a fresh interpreter and a 42M model
def test_recover_memory_stays_well_under_two_copies(tmp_path):
    # 16 layers, ~42M parameters, 81 MiB in bf16; diff shards of 8 MiB. Recovery holds one output shard and a few
    # float32 temporaries of the largest tensor, never the whole model twice. Anonymous memory is sampled: the
    # mapped safetensors pages are page cache, not a copy.
    model = tiny(0, vocab=4000, hidden=512, layers=16)
    model.save_pretrained(tmp_path / "base")
    model.to(torch.bfloat16)  # in place: the tuned model is the base rounded to bf16, built once
    n_bytes = sum(p.numel() * 2 for p in model.parameters())
    model.save_pretrained(tmp_path / "tuned")
    make_diff(tmp_path / "base", tmp_path / "tuned", tmp_path / "diff", shard_bytes=8 * 2**20)
    code = f"""
import threading, time
from pathlib import Path
from alpaca_ds.release.weights import recover
def anon():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("RssAnon:"))
before, peak, done = anon(), [0], []
def sample():
    while not done:
        peak[0] = max(peak[0], anon())
        time.sleep(0.001)
t = threading.Thread(target=sample)
t.start()
recover(Path({str(tmp_path / "base")!r}), Path({str(tmp_path / "diff")!r}), Path({str(tmp_path / "out")!r}),
        shard_bytes=8 * 2**20)
done.append(1)
t.join()
print(before, peak[0])
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    before, peak = map(int, out.stdout.split()[-2:])
    growth = peak - before
    print(
        f"model {n_bytes / 2**20:.0f} MiB in bf16, recover peak anonymous growth {growth / 2**20:.0f} MiB "
        f"({growth / n_bytes:.2f} copies)"
    )
    assert growth < 0.75 * n_bytes, (growth, n_bytes)  # two full copies would be 2.0

"""The DeepSpeed trainer for real: ZeRO-3 + bf16 on 2 CPU ranks over gloo through the deepspeed launcher.

One uninterrupted run of the tiny recipe is the reference for the resume test (kill, relaunch, identical losses)
and for the export checks. From one saved set of weights, a ZeRO-3 run is compared with torch FSDP (Alpaca's
engine) on the same batches, with the other engine configs (zero3_offload, zero2_bf16) and with gradient
checkpointing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alpaca_ds.common.serving import free_port
from alpaca_ds.config import load_config
from alpaca_ds.train.config import TrainConfig
from helpers.evaluation import run_cli
from helpers.paths import ROOT
from helpers.training import (
    ENV,
    FROM_INIT_STEPS,
    RECIPE,
    as_sets,
    fsdp_command,
    launch,
    launch_and_kill,
    losses,
    metrics,
    worst_relative,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference_run(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "reference"
    port = free_port()
    result = launch(f"output_dir={run}", f"data.path={dataset}", port=port)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # DeepSpeed's CPU all-reduce leaves a 66 MiB /dev/shm file per rank unless the trainer removes it
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*"))
    assert "done: 42 steps" in result.stdout
    return run


def hf_cosine(step: int, peak: float, warmup: int, total: int) -> float:
    """The lr of Alpaca's HF Trainer schedule (linear warmup, cosine to 0), written out."""
    if step < warmup:
        return peak * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return peak * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def test_tiny_recipe_trains_checkpoints_and_exports(reference_run, dataset):
    rows = [r for r in metrics(reference_run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 43))
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    cfg = load_config(TrainConfig, RECIPE)
    for r in rows:  # the schedule is Alpaca's, step for step
        assert r["lr"] == pytest.approx(hf_cosine(r["step"] - 1, cfg.optim.lr, 2, 42), rel=1e-6, abs=1e-12)
        assert math.isfinite(r["grad_norm"]) and r["real_tokens"] <= r["tokens"] and r["tokens_per_s"] > 0
    # each logged step saw one global batch: 8 examples of the dataset's real lengths
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert sum(r["real_tokens"] for r in rows[:14]) >= manifest["splits"]["train"]["tokens"]
    val = [r["val_loss"] for r in metrics(reference_run) if "val_loss" in r]
    assert len(val) == 5 and val[-1] < val[0]
    # checkpoints: `latest` names the last one; keep_last=2 leaves two
    checkpoints = reference_run / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step-00000042"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000040", "step-00000042"]
    assert (reference_run / "loss.png").stat().st_size > 10_000
    # the export loads with plain transformers, with Alpaca's [PAD] token, and generates
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = reference_run / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert len(tokenizer) == model.config.vocab_size == manifest["tokenizer"]["vocab_size"]
    assert tokenizer.pad_token == "[PAD]" and model.generation_config.pad_token_id == tokenizer.pad_token_id
    ids = tokenizer("### Instruction:\nSay hi.\n\n### Response:", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=5, do_sample=False).shape[1] > ids.shape[1]


def test_resume_after_kill_gives_identical_losses(reference_run, dataset, tmp_path):
    run = tmp_path / "resumed"
    args = (f"output_dir={run}", f"data.path={dataset}", "checkpoint.every_steps=4")
    assert 14 <= launch_and_kill(run, args, 14) < 42
    # relaunch through `alpaca-ds train`, which checks the run and starts the same launcher command
    result = run_cli("train", "--config", str(RECIPE), "--num-gpus", "2", *as_sets(args), timeout=900, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deepspeed.launcher.runner --num_gpus 2 --module alpaca_ds.train" in result.stdout
    assert "resumed from step-000000" in result.stdout
    ours = [(r["step"], r["loss"], r.get("val_loss")) for r in metrics(run)]
    theirs = [(r["step"], r["loss"], r.get("val_loss")) for r in metrics(reference_run)]
    assert ours == theirs  # exactly: same batches, same optimizer state, same RNG


@pytest.fixture(scope="module")
def zero3_from_init(from_init, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("zero3-from-init") / "run"
    result = launch(f"output_dir={run}", *from_init)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run


def test_zero3_matches_torch_fsdp_from_the_same_weights(from_init, zero3_from_init, tmp_path):
    fsdp = tmp_path / "fsdp"
    result = subprocess.run(
        fsdp_command(f"output_dir={fsdp}", *from_init), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours, theirs = losses(zero3_from_init), losses(fsdp)
    assert worst_relative(ours, theirs) < 0.01, list(zip(ours, theirs))
    assert ours[-1] < ours[0] - 0.3  # and both actually trained


@pytest.mark.parametrize(
    "variant",
    [
        "ds_config=ds_configs/zero3_offload.yaml",
        "ds_config=ds_configs/zero2_bf16.yaml",
        "model.gradient_checkpointing=true",
    ],
)
def test_other_engine_settings_train_the_same_model(variant, from_init, zero3_from_init, tmp_path):
    # Offloading moves the optimizer and parameters to the CPU, ZeRO-2 shards less, gradient checkpointing
    # recomputes activations; none changes the maths, so every step's loss stays with the plain ZeRO-3 run's.
    run = tmp_path / "run"
    result = launch(f"output_dir={run}", *from_init, variant)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"done: {FROM_INIT_STEPS} steps" in result.stdout and "reloaded logits within" in result.stdout
    ours, theirs = losses(run), losses(zero3_from_init)
    assert worst_relative(ours, theirs) < 0.01, list(zip(ours, theirs))


def test_export_command_matches_the_final_export(reference_run, tmp_path):
    out = tmp_path / "exported"
    checkpoint = reference_run / "checkpoints" / "step-00000042"
    result = run_cli("export", str(checkpoint), str(out), timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    exported, final = load_file(out / "model.safetensors"), load_file(reference_run / "final" / "model.safetensors")
    assert exported.keys() == final.keys()
    for name in final:  # the fp32 masters cast to bf16 are the engine's bf16 weights
        assert torch.equal(exported[name], final[name]), name


def test_model_setup_under_zero3(tmp_path):
    # One rank, real ZeRO-3: a pretrained model loads partitioned and its new embedding rows are the mean of the
    # old ones (set on gathered parameters); a random model is transformers' own initialisation of the config.
    code = f"""
import torch, deepspeed
from transformers import LlamaConfig, LlamaForCausalLM
from alpaca_ds.train.config import ModelConfig
from alpaca_ds.train.model import build_model
deepspeed.init_distributed(dist_backend="gloo")
ds = {{"train_micro_batch_size_per_gpu": 1, "bf16": {{"enabled": False}}, "zero_optimization": {{"stage": 3}}}}
shape = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1)
LlamaForCausalLM(LlamaConfig(**shape)).save_pretrained({str(tmp_path / "pretrained")!r})
model = build_model(ModelConfig(name_or_path={str(tmp_path / "pretrained")!r}, tokenizer="unused"), ds, 53)
q = model.model.layers[0].self_attn.q_proj.weight
assert q.numel() == 0 and tuple(q.ds_shape) == (16, 16), "not loaded partitioned"
emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
with deepspeed.zero.GatheredParameters([emb, head]):
    for w in (emb, head):
        assert w.shape == (53, 16), w.shape
        assert torch.allclose(w[50:], w[:50].mean(0, keepdim=True).expand(3, -1)), "new rows are not the mean"
        assert not torch.allclose(w[:50], w[:50].mean(0, keepdim=True).expand(50, -1))
model = build_model(ModelConfig(init_config=shape, init_seed=3, tokenizer="unused"), ds, 50)
torch.manual_seed(3)
reference = LlamaForCausalLM(LlamaConfig(**shape)).state_dict()
assert model.state_dict().keys() == reference.keys()
for name, value in model.state_dict().items():
    assert torch.equal(value, reference[name]), name
assert 0.015 < float(model.get_input_embeddings().weight.std()) < 0.025  # initializer_range 0.02
print("ok")
"""
    env = {
        **ENV,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]

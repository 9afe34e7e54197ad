"""`alpaca-ds plan`: model-state memory equal to DeepSpeed's own estimators, parameter counts equal to DeepSpeed's
model_to_params, activation memory against a peak measured on CPU, steps and tokens equal to what the trainer's
sampler does, and the table and JSON for people and tools."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from alpaca_ds.cli import cli
from alpaca_ds.cluster import alpaca_lengths
from alpaca_ds.cluster.arch import count_params, resolve_arch
from alpaca_ds.cluster.memory import Dims, activation_bytes
from alpaca_ds.cluster.plan import ENGINES, GIB, make_plan
from alpaca_ds.cluster.presets import ARCHS
from alpaca_ds.cluster.workload import workload
from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config
from alpaca_ds.train.config import TrainConfig
from helpers.data import build_dataset
from helpers.paths import ALPACA_DATA, LLAMA_TOKENIZER, ROOT, needs_shared

ALPACA_7B = ROOT / "launch" / "recipes" / "alpaca_7b.yaml"
ALPACA_13B = ROOT / "launch" / "recipes" / "alpaca_13b.yaml"
TINY = ROOT / "launch" / "recipes" / "tiny.yaml"


def llama_params(h: int, i: int, layers: int, vocab: int) -> int:
    """LLaMA's parameter count written out: embeddings and lm_head, per layer attention + SwiGLU + 2 norms, final norm."""
    return 2 * vocab * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h


def recipe(path, *overrides) -> TrainConfig:
    return load_config(TrainConfig, path, list(overrides))


# ---------------------------------------------------------------- model states: DeepSpeed's estimators


@pytest.fixture(scope="module")
def plan_7b_8gpus():
    return make_plan(recipe(ALPACA_7B, "data.path=/nonexistent"), "alpaca_7b.yaml", 1, 8)


def test_llama_7b_counted_exactly(plan_7b_8gpus):
    m = plan_7b_8gpus["model"]
    assert m["vocab_size"] == 32001  # LLaMA's 32,000 + [PAD], as Alpaca adds it
    assert m["parameters"] == llama_params(4096, 11008, 32, 32001) == 6_738_423_808
    assert m["largest_layer_parameters"] == 32001 * 4096 and m["largest_layer"] == "model.embed_tokens"


def deepspeed_estimate(
    params: int, largest: int, gpus: int, nodes: int, stage: int, offload_optimizer: bool, offload_params: bool
) -> tuple[int, int]:
    """(CPU bytes per node, GPU bytes) from DeepSpeed's own estimator of the stage, as a plan assumes (zero_init)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        return estimate_zero3_model_states_mem_needs(
            params,
            largest,
            num_gpus_per_node=gpus,
            num_nodes=nodes,
            cpu_offload=offload_optimizer,
            cpu_offload_params=offload_params,
            zero_init=True,
            additional_buffer_factor=1.5,
        )[:2]
    return estimate_zero2_model_states_mem_needs(
        params, num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=offload_optimizer, additional_buffer_factor=1.5
    )


@pytest.mark.parametrize("nodes, gpus", [(1, 8), (2, 8), (1, 1), (4, 4)])
def test_model_states_equal_deepspeeds_estimators(nodes, gpus):
    p = make_plan(
        recipe(ALPACA_7B, "data.path=/nonexistent", f"batch.micro_batch_size={128 // (nodes * gpus)}"),
        "alpaca_7b.yaml",
        nodes,
        gpus,
    )
    total, largest = p["model"]["parameters"], p["model"]["largest_layer_parameters"]
    states = p["memory"]["model_states"]
    for key, _, stage, offload_optimizer, offload_params in ENGINES:
        cpu, gpu = deepspeed_estimate(total, largest, gpus, nodes, stage, offload_optimizer, offload_params)
        assert (states[key]["gpu_bytes"], states[key]["cpu_bytes_per_node"]) == (gpu, cpu), key


def test_7b_zero3_on_8_gpus_is_14_6_gib(plan_7b_8gpus):
    states = plan_7b_8gpus["memory"]["model_states"]
    assert states["zero3"]["gpu_bytes"] / GIB == pytest.approx(14.61, abs=0.005)  # no offload
    assert states["zero3_offload_optimizer"]["gpu_bytes"] / GIB == pytest.approx(2.06, abs=0.005)
    assert states["zero3_offload_all"]["gpu_bytes"] / GIB == pytest.approx(0.49, abs=0.005)
    assert plan_7b_8gpus["engine"]["key"] == "zero3"  # ds_configs/zero3_bf16.yaml


def test_offload_engine_yaml_is_recognised():
    p = make_plan(
        recipe(ALPACA_13B, "data.path=/nonexistent", "ds_config=ds_configs/zero3_offload.yaml"), "alpaca_13b.yaml", 1, 8
    )
    assert p["engine"]["key"] == "zero3_offload_all"
    assert p["memory"]["total"] == (
        p["memory"]["model_states"]["zero3_offload_all"]["gpu_bytes"]
        + p["memory"]["activations"]["without_checkpointing"]
        + p["memory"]["zero_buffers"]["zero3_offload_all"]
        + p["memory"]["reserve"]
    )
    p2 = make_plan(
        recipe(ALPACA_7B, "data.path=/nonexistent", "ds_config=ds_configs/zero2_bf16.yaml"), "alpaca_7b.yaml", 1, 8
    )
    assert p2["engine"]["key"] == "zero2"


@pytest.mark.parametrize(
    "config",
    [
        {
            "model_type": "llama",
            "vocab_size": 1001,
            "hidden_size": 64,
            "intermediate_size": 176,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        {
            "model_type": "llama",
            "vocab_size": 300,
            "hidden_size": 32,
            "intermediate_size": 4096,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "tie_word_embeddings": True,
        },
    ],
)
def test_meta_device_counts_equal_deepspeeds_model_to_params(config):
    from deepspeed.runtime.zero.stage3 import model_to_params
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(config)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs))
    total, largest, _, _ = count_params(config)
    assert (total, largest) == model_to_params(model)  # a real model on the CPU, counted by DeepSpeed


def test_architecture_sources(tmp_path):
    cfg = recipe(ALPACA_7B, "model.name_or_path=someone/unknown-model")
    with pytest.raises(UserError, match="no local config.json and no preset for it; pass its architecture with --arch"):
        resolve_arch(cfg)
    assert resolve_arch(cfg, "llama-13b").total_params == llama_params(5120, 13824, 40, 32001)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**ARCHS["llama-7b"], "architectures": ["LlamaForCausalLM"]}))
    local = resolve_arch(recipe(ALPACA_7B, f"model.name_or_path={folder}"))
    assert local.total_params == llama_params(4096, 11008, 32, 32000)  # no preset: no [PAD] assumed
    assert resolve_arch(cfg, str(folder), dataset_vocab=32001).total_params == llama_params(4096, 11008, 32, 32001)
    tiny = resolve_arch(recipe(TINY))
    assert tiny.source.startswith("the recipe's model.init_config")


# ---------------------------------------------------------------- activations


def _bench():
    spec = importlib.util.spec_from_file_location("bench_activations", ROOT / "benchmarks" / "bench_activations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.slow
def test_activation_formula_against_measured_peak(attention):
    measure = _bench().measure_peak
    h, i, layers, heads, vocab, micro, seq = 256, 688, 3, 8, 2000, 2, 192
    d = Dims(h, i, layers, heads, vocab)
    plain = measure(d, micro, seq, attention, False)
    assert activation_bytes(d, micro, seq, checkpointing=False, attention=attention) == pytest.approx(plain, rel=0.01)
    ckpt = measure(d, micro, seq, attention, True)
    ratio = activation_bytes(d, micro, seq, checkpointing=True, attention=attention) / ckpt
    assert 0.97 <= ratio <= 1.2, ratio  # a bound, mostly a little over
    assert ckpt < plain


def test_activations_scale_with_the_micro_batch_and_checkpointing_saves_most(plan_7b_8gpus):
    d = Dims(4096, 11008, 32, 32, 32001)
    one = activation_bytes(d, 1, 512, checkpointing=False)
    assert activation_bytes(d, 4, 512, checkpointing=False) == 4 * one
    assert plan_7b_8gpus["memory"]["activations"]["without_checkpointing"] == 4 * one
    assert activation_bytes(d, 4, 512, checkpointing=True) < 0.15 * 4 * one


# ---------------------------------------------------------------- steps, tokens, time


@pytest.mark.parametrize("batching", ["random", "length_grouped", "packed"])
def test_workload_is_the_samplers_own(sample_dataset, batching):
    from alpaca_ds.dataset.sampler import MicroBatchSampler
    from alpaca_ds.dataset.shards import TokenizedDataset

    cfg = recipe(TINY, f"data.path={sample_dataset}", f"data.batching={batching}", "data.pack_length=512")
    lengths = TokenizedDataset(sample_dataset, "train").lengths
    world, (micro, accum) = 2, cfg.batch.resolve(2)
    arch = resolve_arch(cfg)
    w = workload(cfg, lengths, world, micro, accum, arch)
    # what each of the two ranks of the trainer computes, sampler by sampler
    slots = real = 0
    for rank in range(world):
        s = MicroBatchSampler(
            lengths,
            micro,
            world_size=world,
            rank=rank,
            seed=cfg.data.seed,
            mode=batching,
            pack_length=512,
            accumulation=accum,
        )
        assert len(s) // accum == w["steps_per_epoch"]
        for rows in s.epoch_batches(0):
            row_lengths = [int(lengths[r].sum()) for r in rows]
            slots += micro * max(row_lengths)
            real += sum(row_lengths)
    epochs = w["total_steps"] / w["steps_per_epoch"]
    assert w["computed_tokens"] == int(slots * epochs) and w["real_tokens"] == int(real * epochs)


def test_tiny_recipe_steps_match_the_trainer(tmp_path):
    # tests/test_train.py's tiny run, built with a 10% validation split, trains 42 steps
    data = tmp_path / "ds"
    build_dataset(data, "val_fraction=0.1")
    p = make_plan(recipe(TINY, f"data.path={data}"), "tiny.yaml", 1, 2, gpus=["A100-80GB"])
    assert (p["workload"]["steps_per_epoch"], p["workload"]["total_steps"]) == (14, 42)
    assert p["workload"]["source"] == f"{data} (manifest)"
    manifest = json.loads((data / "manifest.json").read_text())
    assert p["model"]["vocab_size"] == manifest["tokenizer"]["vocab_size"]
    assert p["workload"]["real_tokens"] >= 3 * manifest["splits"]["train"]["tokens"]


def test_time_and_cost_follow_from_flops(plan_7b_8gpus):
    w = plan_7b_8gpus["workload"]
    assert w["source"].endswith(alpaca_lengths.SOURCE) and w["examples"] == 52002
    assert w["steps_per_epoch"] == 407 and w["total_steps"] == 1221  # ceil(52002 / 128), 3 epochs
    # every example of each epoch once, plus the few wrapped around to fill each epoch's last step
    assert 0 <= w["real_tokens"] - 3 * alpaca_lengths.TOKENS < 3 * 128 * 512
    a100 = next(r for r in plan_7b_8gpus["gpus"] if r["gpu"] == "A100-80GB")
    assert a100["hours"] * 3600 == pytest.approx(w["flops"] / (8 * 312e12 * 0.4))
    assert a100["cost_usd"] == pytest.approx(a100["hours"] * 8 * a100["usd_per_gpu_hour"])
    assert a100["fits"] and a100["max_valid_micro_batch"] == 16
    l4 = next(r for r in plan_7b_8gpus["gpus"] if r["gpu"] == "L4-24GB")
    assert not l4["fits"]


# ---------------------------------------------------------------- the command


def plan_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alpaca_ds.cli", "plan", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_plan_command_json_and_table():
    result = plan_cli(
        "--config",
        str(ALPACA_7B),
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--json",
        "--usd-per-gpu-hour",
        "2",
        "--mfu",
        "0.3",
        "--gpu",
        "A100-40GB",
        "--gpu",
        "H100-80GB",
    )
    assert result.returncode == 0, result.stderr
    p = json.loads(result.stdout)
    assert p["batch"] == {"global": 128, "micro": 4, "accumulation": 2, "world": 16}
    assert [r["gpu"] for r in p["gpus"]] == ["A100-40GB", "H100-80GB"]
    assert all(r["usd_per_gpu_hour"] == 2 for r in p["gpus"]) and p["assumptions"]["mfu"] == 0.3
    table = plan_cli("--config", str(ALPACA_7B), "--gpus-per-node", "8")
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "model states * ZeRO-3" in out and "14.61 GiB" in out
    assert "global batch 128 = micro-batch 4 x accumulation 4 x world 8" in out
    assert "assuming Alpaca 52K" in out and "A100-80GB" in out and "largest micro-batch that fits" in out


def test_plan_refuses_an_impossible_batch_with_the_arithmetic():
    result = plan_cli("--config", str(ALPACA_7B), "--nodes", "3", "--gpus-per-node", "8")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "128 is not divisible by 24 GPUs" in result.stderr
    result = plan_cli("--config", str(ALPACA_7B), "--gpu", "V100")
    assert result.returncode == 2 and "--gpu V100: unknown" in result.stderr


@needs_shared
@pytest.mark.slow
def test_shipped_alpaca_lengths_are_the_real_build(tmp_path):
    from alpaca_ds.dataset.shards import TokenizedDataset

    build_dataset(tmp_path / "ds", f"input={ALPACA_DATA}", f"tokenizer={LLAMA_TOKENIZER}")
    lengths = TokenizedDataset(tmp_path / "ds", "train").lengths
    assert int(lengths.min()) == alpaca_lengths.SHORTEST
    assert tuple(np.bincount(lengths)[alpaca_lengths.SHORTEST :].tolist()) == alpaca_lengths.COUNTS


# ---------------------------------------------------------------- LoRA and QLoRA

ALPACA_LORA_1GPU = ROOT / "launch" / "recipes" / "alpaca_lora_7b_1gpu.yaml"


@pytest.fixture(scope="module")
def plan_lora_1gpu():
    return make_plan(recipe(ALPACA_LORA_1GPU, "data.path=/nonexistent"), "alpaca_lora_7b_1gpu.yaml", 1, 1, seq_len=256)


def test_lora_counts_are_peft_and_the_frozen_base_is_2_bytes_or_nf4(plan_lora_1gpu):
    from alpaca_ds.cluster.memory import NF4_BYTES, lora_shape

    lora = plan_lora_1gpu["lora"]
    assert lora["trainable_parameters"] == 4_194_304  # what alpaca-lora prints for r 8 on q_proj, v_proj of 7B
    assert lora["trainable_parameters"] == 32 * 2 * 8 * (4096 + 4096)  # A and B of 2 modules in 32 layers, written out
    assert lora["frozen_bytes"] == 2 * plan_lora_1gpu["model"]["parameters"]
    cfg = recipe(ALPACA_LORA_1GPU, "model.lora.quantize=nf4")
    q = lora_shape(resolve_arch(cfg).config, cfg.model.lora)
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # the decoder's Linear weights; lm_head stays 16-bit
    assert q["quantized_parameters"] == linear
    assert q["frozen_bytes"] == int(NF4_BYTES * linear + 2 * (plan_lora_1gpu["model"]["parameters"] - linear))


@pytest.mark.parametrize("nodes, gpus", [(1, 1), (1, 8), (2, 4)])
def test_lora_model_states_are_deepspeeds_estimators_plus_the_frozen_base(nodes, gpus):
    p = make_plan(
        recipe(
            ROOT / "launch" / "recipes" / "alpaca_lora_7b.yaml",
            "data.path=/nonexistent",
            f"batch.micro_batch_size={128 // (nodes * gpus) if nodes * gpus > 4 else 4}",
        ),
        "alpaca_lora_7b.yaml",
        nodes,
        gpus,
    )
    trainable, frozen = p["lora"]["trainable_parameters"], p["lora"]["frozen_bytes"]
    largest = p["model"]["largest_layer_parameters"]
    states = p["memory"]["model_states"]
    for key, _, stage, offload_optimizer, offload_params in ENGINES:
        cpu, gpu = deepspeed_estimate(trainable, largest, gpus, nodes, stage, offload_optimizer, offload_params)
        if stage == 3:  # sharded, or in CPU memory with parameter offload
            frozen_gpu, frozen_cpu = (0, frozen / nodes) if offload_params else (frozen / (nodes * gpus), 0)
        else:
            frozen_gpu, frozen_cpu = frozen, 0  # replicated
        assert states[key]["gpu_bytes"] == int(gpu + frozen_gpu), key
        assert states[key]["cpu_bytes_per_node"] == int(cpu + frozen_cpu), key


@pytest.mark.parametrize(
    "targets, dropout, checkpointing, low, high",
    [
        (("q_proj", "v_proj"), 0.0, False, 0.99, 1.01),
        (("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), 0.0, False, 0.99, 1.01),
        # CPU's dropout keeps a bf16 mask where CUDA's fused kernel keeps a 1-byte one (the formula's): a little under
        (("q_proj", "v_proj", "lm_head"), 0.05, False, 0.96, 1.0),
        (("q_proj", "v_proj"), 0.0, True, 0.97, 1.15),
    ],
)
@pytest.mark.slow
def test_lora_activation_formula_against_measured_peak(targets, dropout, checkpointing, low, high):
    # a frozen base keeps far fewer activations: the formula follows which weights train, measured on CPU
    d, micro, seq = Dims(512, 1376, 4, 8, 1000), 2, 256
    lora = {"target_modules": list(targets), "lora_dropout": dropout}
    measured = _bench().measure_peak(d, micro, seq, "sdpa", checkpointing, lora)
    formula = activation_bytes(
        d, micro, seq, checkpointing=checkpointing, trained=frozenset(targets), dropout=dropout > 0
    )
    assert low <= formula / measured <= high, formula / measured
    assert formula < activation_bytes(d, micro, seq, checkpointing=checkpointing)


def test_one_gpu_verdicts_for_7b_and_13b_lora_and_qlora(plan_lora_1gpu, monkeypatch):
    rows = {(r["model"], r["quantize"]): r for r in plan_lora_1gpu["single_gpu_lora"]}
    assert set(rows) == {(m, q) for m in ("llama-7b", "llama-13b") for q in ("none", "nf4")}
    assert rows[("llama-7b", "none")]["needed_bytes"] == plan_lora_1gpu["memory"]["total"]  # the recipe itself
    for model in ("llama-7b", "llama-13b"):
        assert rows[(model, "nf4")]["needed_bytes"] < rows[(model, "none")]["needed_bytes"] / 2
    assert rows[("llama-7b", "none")]["fits"]["RTX4090-24GB"] and rows[("llama-13b", "nf4")]["fits"]["RTX4090-24GB"]
    assert not rows[("llama-13b", "none")]["fits"]["RTX4090-24GB"] and rows[("llama-13b", "none")]["fits"]["A100-40GB"]
    # the command in this interpreter (click's runner): the plans above are cached here, where a process of its
    # own would import torch, transformers and peft and build the meta models again (~9 CPU-seconds)
    monkeypatch.chdir(ROOT)
    table = CliRunner().invoke(
        cli, ["plan", "--config", str(ALPACA_LORA_1GPU), "--gpus-per-node", "1", "--seq-len", "256"]
    )
    assert table.exit_code == 0 and table.exception is None, (table.stderr, table.exception)
    assert "LoRA      4,194,304 trainable parameters" in table.stdout and "13B QLoRA" in table.stdout

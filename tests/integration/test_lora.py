"""LoRA under the DeepSpeed trainer for real: peft adapters on a frozen tiny LLaMA, 2 CPU ranks over gloo.

One ZeRO-3 run from the saved weights of the `from_init` fixture (tests/conftest.py) is the reference for
everything else: its losses against LoRA written out in plain torch (tests/helpers/lora_reference.py), its base
tensors against the saved ones, its adapter folder loaded with peft onto the saved base, its checkpoints (adapter
and optimizer state only), and a run killed with SIGKILL and relaunched. ZeRO-2 and ZeRO-3 runs with packing and
modules_to_save check the same freezing, and the release of an adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.provenance import tensor_sha256
from alpaca_ds.train.config import TrainConfig
from helpers import lora_reference
from helpers.evaluation import run_cli
from helpers.training import (
    ENV,
    FROM_INIT_STEPS,
    LORA,
    RECIPE,
    deepspeed_command,
    launch,
    launch_and_kill,
    lora_settings,
    losses,
    metrics,
    worst_relative,
)

pytestmark = pytest.mark.slow


def initial_adapters(cfg: TrainConfig, vocab_size: int) -> dict[str, torch.Tensor]:
    """The adapter the trainer starts from, by peft's own initialisation from the same seed (file naming)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    model = lora_reference.base_model(cfg, vocab_size)
    torch.manual_seed(cfg.model.init_seed)
    lc = cfg.model.lora
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=lc.r,
            lora_alpha=lc.alpha,
            lora_dropout=lc.dropout,
            target_modules=list(lc.target_modules),
            modules_to_save=list(lc.modules_to_save) or None,
        ),
    )
    return {k: v.clone() for k, v in get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()}


def base_hashes(cfg: TrainConfig, vocab_size: int) -> dict[str, str]:
    return {k: tensor_sha256(v) for k, v in lora_reference.base_model(cfg, vocab_size).state_dict().items()}


def vocab(dataset: Path) -> int:
    return json.loads((dataset / "manifest.json").read_text())["tokenizer"]["vocab_size"]


@pytest.fixture(scope="module")
def lora_run(from_init, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lora-zero3") / "run"
    result = launch(f"output_dir={run}", *from_init, *LORA)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"done: {FROM_INIT_STEPS} steps" in result.stdout
    assert "adapter (reloaded logits within" in result.stdout and "final (reloaded logits within" in result.stdout
    return run


def check_frozen_base_and_trained_adapter(run: Path, cfg: TrainConfig, dataset: Path) -> None:
    """Every base tensor bit-identical to the saved one; every adapter tensor present, non-empty and changed."""
    lora = json.loads((run / "provenance.json").read_text())["lora"]
    expected = base_hashes(cfg, vocab(dataset))
    assert lora["base_tensors_sha256"].keys() == expected.keys()
    changed = [name for name, h in expected.items() if lora["base_tensors_sha256"][name] != h]
    assert not changed, f"base tensors changed by training: {changed}"
    start, trained = initial_adapters(cfg, vocab(dataset)), load_file(run / "adapter" / "adapter_model.safetensors")
    assert trained.keys() == start.keys() and trained
    for name, tensor in trained.items():
        assert tensor.shape == start[name].shape and tensor.numel() > 0, name
        assert not torch.equal(tensor.float(), start[name].float()), f"{name} did not train"


def test_lora_zero3_trains_only_the_adapter(lora_run, from_init, dataset):
    ours = losses(lora_run)
    assert sum(ours[-5:]) / 5 < sum(ours[:5]) / 5 - 0.3, ours
    check_frozen_base_and_trained_adapter(lora_run, lora_settings(lora_run, from_init), dataset)


def test_lora_matches_a_hand_built_reference(lora_run, from_init, dataset):
    cfg = lora_settings(lora_run, from_init)
    start = initial_adapters(cfg, vocab(dataset))
    init = {
        name.removeprefix("base_model.model.").removesuffix(".lora_A.weight"): (
            a,
            start[name.replace("lora_A", "lora_B")],
        )
        for name, a in start.items()
        if name.endswith(".lora_A.weight")
    }
    assert len(init) == 2 * 2 + 1  # q_proj and v_proj in 2 layers, lm_head
    theirs = lora_reference.train(cfg, init, world=2)
    ours = losses(lora_run)
    worst = worst_relative(ours, theirs)
    print(f"LoRA vs plain torch, {len(ours)} steps: worst relative loss difference {worst:.3%}")
    assert worst < 0.01, list(zip(ours, theirs))


def test_lora_checkpoint_holds_only_the_adapter_and_its_optimizer_state(lora_run, from_init, dataset):
    adapter = sum(t.numel() for t in initial_adapters(lora_settings(lora_run, from_init), vocab(dataset)).values())
    tag = lora_run / "checkpoints" / (lora_run / "checkpoints" / "latest").read_text()
    fp32 = 0
    for rank in range(2):
        states = torch.load(tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt", weights_only=False)
        assert states["module"] and all(".lora_" in name for name in states["module"]), list(states["module"])
        assert not states["frozen_param_fragments"]
        optim = torch.load(tag / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", weights_only=False)
        fp32 += sum(t.numel() for t in optim["optimizer_state_dict"]["fp32_flat_groups"])
    assert adapter <= fp32 < adapter + 64  # the adapter's fp32 masters (and Adam's states beside them), padded


def test_adapter_loads_with_peft_on_the_saved_base(lora_run, from_init, dataset):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alpaca_ds.train.export import LORA_ULPS, check_logits, fixed_batch, logits

    cfg = lora_settings(lora_run, from_init)
    peft_model = PeftModel.from_pretrained(lora_reference.base_model(cfg, vocab(dataset)), lora_run / "adapter")
    batch = fixed_batch(vocab(dataset))
    merged = AutoModelForCausalLM.from_pretrained(lora_run / "final", dtype=torch.bfloat16)
    check_logits(logits(peft_model, batch), logits(merged, batch), batch["attention_mask"], LORA_ULPS)


def test_export_command_rebuilds_the_runs_exports_from_a_checkpoint(lora_run, tmp_path):
    # the checkpoint holds the adapter's fp32 masters only; the base is rebuilt from model.name_or_path
    out = tmp_path / "exported"
    checkpoint = lora_run / "checkpoints" / f"step-{FROM_INIT_STEPS:08d}"
    result = run_cli("export", str(checkpoint), str(out), timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    for folder, name in (("adapter", "adapter_model.safetensors"), ("final", "model.safetensors")):
        exported, final = load_file(out / folder / name), load_file(lora_run / folder / name)
        assert exported.keys() == final.keys()
        for key in final:  # the fp32 masters cast to bf16 are the engine's bf16 weights
            assert torch.equal(exported[key], final[key]), (folder, key)


def test_lora_resume_after_kill_gives_identical_losses(lora_run, from_init, tmp_path):
    run = tmp_path / "resumed"
    args = (f"output_dir={run}", *from_init, *LORA, "checkpoint.every_steps=3")
    assert 8 <= launch_and_kill(run, args, 8) < FROM_INIT_STEPS
    result = launch(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from step-000000" in result.stdout
    assert [(r["step"], r["loss"]) for r in metrics(run)] == [(r["step"], r["loss"]) for r in metrics(lora_run)]


@pytest.mark.parametrize("engine", ["zero2_bf16", "zero3_bf16"])
def test_lora_packed_with_modules_to_save(engine, from_init, dataset, tmp_path):
    # ZeRO-3 loads the embeddings partitioned: peft copies them gathered for modules_to_save (its known failure
    # otherwise: copies with no elements)
    run = tmp_path / "run"
    extra = (
        f"ds_config=ds_configs/{engine}.yaml",
        "data.batching=packed",
        "data.pack_length=512",
        "model.lora.target_modules=[q_proj, v_proj]",
        "model.lora.modules_to_save=[embed_tokens, lm_head]",
        "model.lora.merged_export=false",
    )
    result = launch(f"output_dir={run}", *from_init, *LORA, *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "adapter (reloaded logits within" in result.stdout and not (run / "final").exists()
    ours = losses(run)
    assert ours[-1] < ours[0] - 0.3, ours
    check_frozen_base_and_trained_adapter(run, lora_settings(run, from_init, *extra), dataset)
    # released as it is: the adapter needs no weight diff; the card says what it is and which base it needs
    from alpaca_ds.release.cards import pack

    out = pack(run, tmp_path / "release", None, False)
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == (
        run / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    assert not (out / "weight-diff").exists() and not (out / "model").exists()
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    card = (out / "MODEL_CARD.md").read_text()
    provenance = json.loads((run / "provenance.json").read_text())
    assert "A LoRA adapter for" in card and provenance["lora"]["adapter_sha256"] in card
    assert "trained in full: embed_tokens, lm_head" in card and "prompt tokens masked from the loss" in card
    assert "adapter/adapter_model.safetensors" in (out / "SHA256SUMS").read_text()
    with pytest.raises(UserError, match="merged_export false"):
        pack(run, tmp_path / "release-2", None, True)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="QLoRA's 4-bit base needs a CUDA GPU (bitsandbytes); this machine has none"
)
@pytest.mark.parametrize("engine", ["zero3_bf16", "zero2_bf16"])
def test_qlora_trains_and_exports_on_a_gpu(engine, from_init, tmp_path):
    import subprocess

    run = tmp_path / "run"
    sets = (f"output_dir={run}", *from_init, *LORA, "model.lora.quantize=nf4", f"ds_config=ds_configs/{engine}.yaml")
    result = subprocess.run(
        deepspeed_command(*sets, gpus=1),
        cwd=RECIPE.parents[2],
        env={k: v for k, v in ENV.items() if k != "DS_ACCELERATOR"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "adapter (reloaded logits within" in result.stdout and not (run / "final").exists()
    ours = losses(run)
    assert sum(ours[-5:]) / 5 < sum(ours[:5]) / 5 - 0.3, ours

"""LoRA settings before any training: QLoRA refused without a GPU and exporting the adapter only, the recipe's
LoRA keys checked, train_on_prompt's labels, the adapter folder's round trip through peft, and the alpaca-lora
recipes' published settings."""

from __future__ import annotations

import pytest
import torch

from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config
from alpaca_ds.train.config import TrainConfig
from alpaca_ds.train.loop import preflight
from helpers.evaluation import random_llama
from helpers.training import RECIPE, lora_settings


def test_qlora_is_refused_without_a_gpu(dataset, from_init, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: QLoRA is allowed here")
    cfg = lora_settings(tmp_path / "run", from_init, "model.lora.quantize=nf4")
    with pytest.raises(UserError, match="model.lora.quantize nf4: QLoRA's 4-bit base needs a CUDA GPU"):
        preflight(cfg, 2)


def test_qlora_exports_the_adapter_only(from_init, tmp_path):
    from alpaca_ds.train.lora import quantization_config

    cfg = lora_settings(tmp_path / "run", from_init, "model.lora.quantize=nf4")
    q = quantization_config(cfg.model)
    assert q.load_in_4bit and q.bnb_4bit_quant_storage == torch.bfloat16  # what ZeRO-3 partitions and gathers
    assert not cfg.model.lora.merge and lora_settings(tmp_path, from_init).model.lora.merge
    with pytest.raises(UserError, match="a 4-bit .nf4. base has no exact bf16 weights to merge"):
        lora_settings(tmp_path / "run", from_init, "model.lora.quantize=nf4", "model.lora.merged_export=true")


def test_lora_settings_are_checked(dataset, tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'model.lora.target_module'; did you mean 'model.lora.targe"):
        load_config(TrainConfig, RECIPE, ["model.lora.target_module=[q_proj]"])
    with pytest.raises(UserError, match="model.lora.r"):
        load_config(TrainConfig, RECIPE, ["model.lora.r=0"])


def test_train_on_prompt_labels_every_token(dataset):
    from alpaca_ds.dataset.shards import TokenizedDataset

    masked, full = TokenizedDataset(dataset, "train"), TokenizedDataset(dataset, "train", train_on_prompt=True)
    for i in range(5):
        assert (full[i]["labels"] == full[i]["input_ids"]).all()
        assert (masked[i]["labels"] == -100).sum() > 0
        keep = masked[i]["labels"] != -100
        assert (masked[i]["labels"][keep] == full[i]["labels"][keep]).all()


def test_adapter_folder_round_trips_every_tensor(tmp_path):
    # Saved from a consolidated state dict, reloaded by peft: every tensor comes back equal; a state dict
    # with an empty (ungathered ZeRO-3 partition) or missing adapter tensor is refused before anything is written.
    from peft import PeftModel, get_peft_model, get_peft_model_state_dict

    from alpaca_ds.train import lora
    from alpaca_ds.train.config import LoraConfig

    def base():
        return random_llama(50, hidden=16, layers=2, heads=2, kv_heads=1)

    model = get_peft_model(base(), lora.peft_config(LoraConfig(modules_to_save=("lm_head",)), None))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    state = model.state_dict()
    adapter = lora.adapter_state(model, state)
    assert len(adapter) == 2 * 2 * 2 + 1  # A and B of q_proj and v_proj in 2 layers, and lm_head
    lora.write_adapter(model, adapter, tmp_path / "adapter", torch.float32)
    loaded = get_peft_model_state_dict(PeftModel.from_pretrained(base(), tmp_path / "adapter"))
    assert loaded.keys() == adapter.keys()
    for name, tensor in adapter.items():
        assert tensor.numel() > 0 and torch.equal(loaded[name], tensor), name
    name = next(k for k in state if ".lora_B." in k)
    with pytest.raises(UserError, match="is missing or empty"):
        lora.adapter_state(model, {**state, name: torch.empty(0)})
    with pytest.raises(UserError, match="is missing or empty"):
        lora.adapter_state(model, {k: v for k, v in state.items() if k != name})


@pytest.mark.parametrize("name, world", [("alpaca_lora_7b", 2), ("alpaca_lora_7b", 8), ("alpaca_lora_7b_1gpu", 1)])
def test_alpaca_lora_recipes_hold_its_published_settings(name, world):
    from alpaca_ds.dataset.config import DataBuildConfig
    from alpaca_ds.train.ds_config import build_ds_config

    cfg = load_config(TrainConfig, RECIPE.parent / f"{name}.yaml")
    ds = build_ds_config(cfg, world)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"]) == (128, 4)
    assert ds["gradient_accumulation_steps"] == 128 // (4 * world)
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.data.train_on_prompt) == (3e-4, 3, True)
    lc = cfg.model.lora
    assert (lc.r, lc.alpha, lc.dropout, lc.target_modules, lc.quantize) == (8, 16, 0.05, ("q_proj", "v_proj"), "none")
    built = load_config(DataBuildConfig, RECIPE.parents[2] / "data" / "alpaca_lora.yaml")
    assert built.max_length == 256 and built.output == cfg.data.path


def test_a_run_started_before_lora_existed_still_resumes(dataset, tmp_path):
    # its config.resolved.yaml has no model.lora or data.train_on_prompt: their defaults are what it ran with
    from alpaca_ds.config import dump_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(TrainConfig, RECIPE, [f"output_dir={run}", f"data.path={dataset}"])
    old = [
        line for line in dump_config(cfg).splitlines() if line.strip() not in ("lora: null", "train_on_prompt: false")
    ]
    (run / "config.resolved.yaml").write_text("\n".join(old) + "\n")
    preflight(cfg, 2)
    (run / "config.resolved.yaml").write_text(
        dump_config(
            load_config(TrainConfig, RECIPE, [f"output_dir={run}", f"data.path={dataset}", "data.train_on_prompt=true"])
        )
    )
    with pytest.raises(UserError, match="holds a different run"):
        preflight(cfg, 2)

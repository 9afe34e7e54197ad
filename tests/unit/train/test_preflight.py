"""The trainer's checks before any work, and the global batch per GPU count: a recipe with a typo, a batch that does
not divide, a missing, half-built or foreign dataset, another run's output folder, an engine YAML DeepSpeed
rejects; `alpaca-ds train` refusing before it starts the launcher."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config
from alpaca_ds.train.config import TrainConfig
from alpaca_ds.train.loop import preflight
from helpers.paths import ROOT
from helpers.training import ENV, RECIPE


def recipe(dataset: Path, run: Path, *overrides: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        RECIPE,
        [f"output_dir={run}", f"data.path={dataset}", f"model.tokenizer={ROOT / 'data' / 'tokenizer'}", *overrides],
    )


def test_unknown_key_and_impossible_batch(dataset, tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'optim.warmup_ration'; did you mean 'optim.warmup_ratio'"):
        recipe(dataset, tmp_path, "optim.warmup_ration=0.1")
    with pytest.raises(UserError, match=r"global_batch_size 8 / \(micro_batch_size 2 x world 3 = 6\)"):
        preflight(recipe(dataset, tmp_path / "run"), 3)
    with pytest.raises(UserError, match=r"2 x gradient_accumulation_steps 3 x world 2 = 12, not global_batch_size 8"):
        preflight(recipe(dataset, tmp_path / "run", "batch.gradient_accumulation_steps=3"), 2)


def test_missing_incomplete_or_foreign_dataset(dataset, tmp_path):
    with pytest.raises(UserError, match="no manifest.json .the directory does not exist"):
        preflight(recipe(tmp_path / "absent", tmp_path / "run"), 2)
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match="no manifest.json .the build did not finish"):
        preflight(recipe(tmp_path / "half", tmp_path / "run"), 2)
    other = tmp_path / "other-tokenizer"
    other.mkdir()
    (other / "tokenizer.model").write_bytes((ROOT / "data" / "tokenizer" / "tokenizer.model").read_bytes())
    (other / "tokenizer_config.json").write_text('{"add_bos_token": false}')
    with pytest.raises(UserError, match="built with tokenizer .* but this run uses one"):
        preflight(recipe(dataset, tmp_path / "run", f"model.tokenizer={other}"), 2)


def test_output_dir_of_another_run_is_refused(dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = recipe(dataset, run)
    preflight(cfg, 2)
    from alpaca_ds.config import dump_config

    (run / "config.resolved.yaml").write_text(dump_config(recipe(dataset, run, "optim.lr=0.5")))
    with pytest.raises(UserError, match="holds a different run"):
        preflight(cfg, 2)


@pytest.mark.slow
def test_train_command_fails_before_launching(dataset, tmp_path):
    start = time.time()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpaca_ds.cli",
            "train",
            "--config",
            str(RECIPE),
            "--num-gpus",
            "3",
            "--set",
            f"data.path={dataset}",
            "--set",
            f"output_dir={tmp_path}",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a whole number of accumulation steps" in result.stderr and "deepspeed.launcher" not in result.stdout
    assert time.time() - start < 60


@pytest.mark.parametrize("world", [1, 2, 4, 8, 16, 32])
def test_global_batch_128_holds_for_any_gpu_count(world):
    from alpaca_ds.train.ds_config import build_ds_config

    cfg = load_config(TrainConfig, ROOT / "launch" / "recipes" / "alpaca_7b.yaml")
    ds = build_ds_config(cfg, world)
    assert ds["train_batch_size"] == 128
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world == 128
    assert ds["optimizer"]["params"]["lr"] == 2e-5 and ds["gradient_clipping"] == 1.0


def test_engine_yaml_typo_or_recipe_key_is_refused(dataset, tmp_path):
    engine = tmp_path / "engine.yaml"
    engine.write_text("zero_optimization:\n  stage: 3\n  overlap_com: true\n")
    with pytest.raises(UserError, match=rf"ds_config {engine}: DeepSpeed rejects it: overlap_com"):
        preflight(recipe(dataset, tmp_path / "run", f"ds_config={engine}"), 2)
    engine.write_text("train_batch_size: 64\nzero_optimization:\n  stage: 3\n")
    with pytest.raises(UserError, match="train_batch_size is set from the recipe"):
        preflight(recipe(dataset, tmp_path / "run", f"ds_config={engine}"), 2)

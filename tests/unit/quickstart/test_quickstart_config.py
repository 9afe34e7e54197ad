"""The quickstart before it runs anything: its config and the --quick variant, a run folder holding another
configuration, the config and command of every step for running it by hand, and starting without torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config
from alpaca_ds.quickstart import layout, pipeline
from alpaca_ds.quickstart.config import QuickstartConfig
from alpaca_ds.train.config import TrainConfig
from helpers.paths import ROOT


def test_quick_variant_and_config_errors(tmp_path):
    cfg = load_config(QuickstartConfig, None, [], defaults=layout.default_config())
    quick = cfg.with_quick()
    assert (cfg.generate.num_instructions, cfg.evaluate.tasks, cfg.train.ranks) == (300, 20, 2)
    assert quick.generate.num_instructions < cfg.generate.num_instructions and quick.quick == {}
    assert all(Path(getattr(getattr(cfg, s), k)).is_absolute() for s, k in layout.PATH_KEYS)
    with pytest.raises(UserError, match="quick.train.epoch"):
        load_config(QuickstartConfig, None, ["quick={train: {epoch: 2}}"], defaults=layout.default_config())
    # another configuration in the same run directory is refused, naming what differs
    paths = layout.Paths(tmp_path / "run")
    pipeline.State(paths, cfg).save()
    with pytest.raises(UserError, match="generate.num_instructions"):
        pipeline.State(paths, quick)


def test_every_step_has_its_config_for_running_it_by_hand(tmp_path):
    cfg = load_config(QuickstartConfig, None, [f"out_dir={tmp_path / 'qs'}"], defaults=layout.default_config())
    paths = layout.Paths(cfg.out_dir)
    written = layout.write_hand_configs(cfg, paths)
    assert set(written) == {"generate", "data", "train", "answer", "judge"}
    train = load_config(TrainConfig, written["train"])
    assert (train.output_dir, train.data.path, train.optim.epochs) == (str(paths.run), str(paths.tokenized), 3)
    assert yaml.safe_load(written["judge"].read_text())["api"]["base_url"] == "http://127.0.0.1:8765/v1"
    commands = "\n".join(layout.hand_commands(cfg, paths))
    assert re.search(r"alpaca-ds train --config \S+train\.yaml --num-gpus 2", commands)


def test_the_command_starts_without_torch():
    """`alpaca-ds quickstart` imports torch and DeepSpeed only in the steps that need them."""
    code = "import sys, alpaca_ds.quickstart.pipeline, alpaca_ds.quickstart.report; print(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert not {"torch", "deepspeed", "transformers"} & {m.split(".")[0] for m in loaded.split()}

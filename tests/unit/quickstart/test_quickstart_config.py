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
from alpaca_ds.quickstart import layout
from alpaca_ds.quickstart.config import QuickstartConfig
from alpaca_ds.quickstart.state import State
from alpaca_ds.train.config import TrainConfig
from helpers.paths import ROOT


def _load(*overrides: str) -> QuickstartConfig:
    return load_config(QuickstartConfig, None, list(overrides), defaults=layout.default_config())


def test_quick_variant_and_the_state_file(tmp_path):
    cfg = _load()
    quick = cfg.with_quick()
    full, small = cfg.stage_configs(), quick.stage_configs()
    assert (full["generate"].num_instructions, full["answer"].limit, full["train"].optim.epochs) == (300, 20, 3)
    assert (small["generate"].num_instructions, small["answer"].limit, small["train"].optim.epochs) == (120, 8, 2)
    assert small["answer"].decoding.temperature == full["answer"].decoding.temperature and quick.quick == {}
    assert all(Path(full[s].model_dump()[k]).is_absolute() for s, k in layout.PATH_KEYS[1:])
    # another configuration in the same run directory is refused, naming what differs
    paths = layout.Paths(tmp_path / "run")
    State(paths, cfg).save()
    with pytest.raises(UserError, match=r"other settings \(answer.decoding.max_new_tokens, answer.limit, "):
        State(paths, quick)


@pytest.mark.parametrize(
    "override, message",
    [
        # a step's section is checked against that stage's own schema, with its keys and did-you-mean
        (
            "generate.num_instruction=5",
            "--set 'generate.num_instruction=5': unknown key 'generate.num_instruction'; did you mean "
            "'generate.num_instructions'?",
        ),
        (
            "train.optim.epochs=abc",
            "--set 'train.optim.epochs=abc': train.optim.epochs: Input should be a valid integer",
        ),
        (
            "quick={train: {optim: {epoch: 2}}}",
            "unknown key 'quick.train.optim.epoch'; did you mean 'quick.train.optim.epochs'?",
        ),
        # the keys that tie the steps together are the quickstart's own
        ("judge.api.base_url=http://x/v1", "judge.api.base_url: set by the quickstart itself"),
        ("generate={out_dir: /tmp/g}", "generate.out_dir: set by the quickstart itself"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(UserError) as error:
        _load(override)
    assert message in str(error.value)


def test_every_step_has_its_config_for_running_it_by_hand(tmp_path):
    cfg = _load(f"out_dir={tmp_path / 'qs'}")
    paths = layout.Paths(cfg.out_dir)
    written = layout.write_hand_configs(cfg, paths)
    assert set(written) == {"generate", "data", "train", "answer", "judge"}
    train = load_config(TrainConfig, written["train"])
    assert (train.output_dir, train.data.path, train.optim.epochs) == (str(paths.run), str(paths.tokenized), 3)
    assert yaml.safe_load(written["judge"].read_text())["api"]["base_url"] == "http://127.0.0.1:8765/v1"
    commands = "\n".join(layout.hand_commands(cfg, paths, layout.stage_configs(cfg, paths, layout.HAND_URL)))
    assert re.search(r"alpaca-ds train --config \S+train\.yaml --num-gpus 2", commands)


def test_the_command_starts_without_torch():
    """`alpaca-ds quickstart` imports torch and DeepSpeed only in the steps that need them."""
    code = "import sys, alpaca_ds.quickstart.pipeline, alpaca_ds.quickstart.report; print(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert not {"torch", "deepspeed", "transformers"} & {m.split(".")[0] for m in loaded.split()}

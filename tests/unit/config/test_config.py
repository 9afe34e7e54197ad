"""Configuration: typed schemas, --set overrides, and errors that name the file and the dotted key."""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from alpaca_ds.api.prices import load_table as load_price_table
from alpaca_ds.common.errors import UserError
from alpaca_ds.config import dump_config, load_config
from alpaca_ds.dataset.config import DataBuildConfig
from alpaca_ds.evaluate.config import AnswerConfig, JudgeConfig
from alpaca_ds.generate.config import GenerateConfig
from alpaca_ds.quickstart.config import QuickstartConfig
from alpaca_ds.train.config import TrainConfig
from helpers.paths import ROOT


def load_engine_config(path: Path):
    """An engine YAML is loaded as a run would use it: rendered for the 7B recipe and checked by DeepSpeed."""
    from alpaca_ds.train.ds_config import build_ds_config

    recipe = load_config(TrainConfig, ROOT / "launch" / "recipes" / "alpaca_7b.yaml", [f"ds_config={path}"])
    return build_ds_config(recipe, 8)


# Where each shipped YAML lives -> how it must load (first matching pattern wins). A YAML anywhere else fails
# the test below, so a new config file cannot ship without being loaded here.
SHIPPED = [
    ("data/*.yaml", lambda p: load_config(DataBuildConfig, p)),
    ("launch/recipes/self_instruct_*.yaml", lambda p: load_config(GenerateConfig, p)),
    ("launch/recipes/eval_answer*.yaml", lambda p: load_config(AnswerConfig, p)),
    ("launch/recipes/eval_judge*.yaml", lambda p: load_config(JudgeConfig, p, ["a=a.json", "b=b.json"])),
    ("launch/recipes/quickstart.yaml", lambda p: load_config(QuickstartConfig, p).with_quick()),
    ("launch/recipes/*.yaml", lambda p: load_config(TrainConfig, p)),
    ("ds_configs/*.yaml", load_engine_config),
    ("alpaca_ds/api/prices.yaml", load_price_table),
    (".pre-commit-config.yaml", lambda p: yaml.safe_load(p.read_text())["repos"]),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_every_shipped_yaml_loads():
    listed = subprocess.run(
        ["git", "ls-files", "*.yaml", "*.yml"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    found = sorted(ROOT / p for p in listed)
    assert found, "the project ships YAML configs"
    for path in found:
        relative = path.relative_to(ROOT).as_posix()
        loaders = [load for pattern, load in SHIPPED if fnmatch.fnmatch(relative, pattern)]
        assert loaders, f"{relative}: no loader registered for it in SHIPPED"
        assert loaders[0](path), relative


def test_file_values_and_set_overrides(tmp_path):
    path = write(tmp_path, "input: a.json\noutput: out\ntokenizer: tok\nmax_length: 256\n")
    cfg = load_config(DataBuildConfig, path, ["max_length=1024", "overlength=drop", "val_fraction=0.05"])
    assert (cfg.max_length, cfg.overlength, cfg.val_fraction, cfg.input) == (1024, "drop", 0.05, "a.json")
    with pytest.raises(ValidationError):
        cfg.max_length = 3  # frozen
    # --set values are typed by the schema: digits stay text where a string is wanted
    cfg = load_config(DataBuildConfig, path, ["sha256=0042", "skip_invalid=true", "workers=3"])
    assert (cfg.sha256, cfg.skip_invalid, cfg.workers) == ("0042", True, 3)


def test_typo_names_file_key_and_nearest(tmp_path):
    path = write(tmp_path, "input: a.json\noutput: out\ntokenizer: tok\nmax_lenght: 256\n")
    with pytest.raises(UserError) as e:
        load_config(DataBuildConfig, path)
    msg = str(e.value)
    assert str(path) in msg and "'max_lenght'" in msg and "did you mean 'max_length'" in msg


def test_wrong_type_and_missing(tmp_path):
    path = write(tmp_path, "input: a.json\ntokenizer: tok\nmax_length: long\n")
    with pytest.raises(UserError) as e:
        load_config(DataBuildConfig, path)
    msg = str(e.value)
    assert f"{path}: max_length:" in msg and "'long'" in msg
    assert "missing value for 'output'" in msg


def test_set_errors_name_the_set(tmp_path):
    path = write(tmp_path, "input: a.json\noutput: out\ntokenizer: tok\n")
    with pytest.raises(
        UserError, match=r"--set 'overlenght=drop': unknown key 'overlenght'; did you mean 'overlength'"
    ):
        load_config(DataBuildConfig, path, ["overlenght=drop"])
    with pytest.raises(UserError, match=r"--set 'val_fraction=2': val_fraction"):
        load_config(DataBuildConfig, path, ["val_fraction=2"])
    with pytest.raises(UserError, match="expected dotted.key=value"):
        load_config(DataBuildConfig, path, ["max_length"])


def test_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(DataBuildConfig, write(tmp_path, "input: [unclosed\n"))
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(DataBuildConfig, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(UserError, match="cannot read config"):
        load_config(DataBuildConfig, tmp_path / "nope.yaml")


def test_dump_round_trips(tmp_path):
    cfg = load_config(DataBuildConfig, None, ["input=x", "output=y", "tokenizer=z", "max_length=300"])
    again = load_config(DataBuildConfig, write(tmp_path, dump_config(cfg)))
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg))["max_length"] == 300

"""`alpaca-ds data build` and `data inspect`: tokenized datasets (alpaca_ds/dataset)."""

from __future__ import annotations

import sys

import click

from alpaca_ds.commands.options import CONFIG, SET
from alpaca_ds.config import load_config
from alpaca_ds.dataset.config import DataBuildConfig


@click.group("data")
def data_group():
    """Build and inspect tokenized datasets."""


@data_group.command("build")
@CONFIG
@SET
@click.option(
    "--skip-invalid", is_flag=True, help="Skip invalid records and count them (same as --set skip_invalid=true)."
)
def data_build(config_path, overrides, skip_invalid):
    """Tokenize Alpaca-format JSON/JSONL into loss-masked, memory-mapped shards with a manifest.

    Without --config it builds the sample shipped in data/ with the small tokenizer in data/tokenizer.
    """
    from alpaca_ds.dataset import build

    overrides = (*overrides, "skip_invalid=true") if skip_invalid else overrides
    cfg = load_config(DataBuildConfig, config_path, overrides, defaults=build.default_config())
    click.echo(build.run(cfg).summary())


@data_group.command("inspect")
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--split", default="train", show_default=True, help="Which split to inspect.")
@click.option("--micro-batch", default=4, show_default=True, help="Micro-batch size for the padding-efficiency table.")
@click.option("--jsonl", is_flag=True, help='Print one line per example: {"index", "input_ids", "labels"}.')
def data_inspect(dataset, split, micro_batch, jsonl):
    """Print statistics of a built dataset (or its examples with --jsonl)."""
    from alpaca_ds.dataset import inspect

    if jsonl:
        for line in inspect.example_lines(dataset, split):
            sys.stdout.write(line + "\n")
    else:
        click.echo(inspect.report(dataset, split, micro_batch))

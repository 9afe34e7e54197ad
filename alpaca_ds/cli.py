"""The `alpaca-ds` command: each command loads its config and calls one stage's run(); no logic lives here."""
from __future__ import annotations

import sys

import click

from alpaca_ds.common.errors import UserError
from alpaca_ds.config import DataBuildConfig, load_config

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                      help="YAML config file (defaults apply to what it leaves out).")
SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                   help="Override a config key, e.g. --set max_length=1024 (repeatable).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alpaca-ds")
def cli():
    """alpaca-ds: build instruction-following models the way Stanford Alpaca did, with DeepSpeed."""


@cli.group()
def data():
    """Build and inspect tokenized datasets."""


@data.command("build")
@CONFIG
@SET
@click.option("--skip-invalid", is_flag=True, help="Skip invalid records and count them (same as --set skip_invalid=true).")
def data_build(config_path, overrides, skip_invalid):
    """Tokenize Alpaca-format JSON/JSONL into loss-masked, memory-mapped shards with a manifest.

    Without --config it builds the sample shipped in data/ with the small tokenizer in data/tokenizer.
    """
    from alpaca_ds.dataset import build
    overrides = (*overrides, "skip_invalid=true") if skip_invalid else overrides
    cfg = load_config(DataBuildConfig, config_path, overrides, defaults=build.default_config())
    manifest = build.run(cfg)
    c = manifest["counts"]
    splits = ", ".join(f"{n} {s['examples']} examples / {s['tokens']} tokens" for n, s in manifest["splits"].items())
    click.echo(f"built {cfg.output}: {c['records']} records -> {splits}; truncated {c['truncated']}, "
               f"dropped {c['dropped_overlength']}, invalid skipped {c['invalid_skipped']} "
               f"({manifest['seconds']} s, tokenizer via {manifest['tokenizer']['encoder']})")


@data.command("inspect")
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


def main():
    try:
        cli(standalone_mode=True)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

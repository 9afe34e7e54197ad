"""The `alpaca-ds` command: each command loads its config and calls one stage's run(); no logic lives here."""

from __future__ import annotations

import sys

import click

from alpaca_ds.commands import data, evaluate, generate, release, train
from alpaca_ds.commands.options import SET, config_option, flags
from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alpaca-ds")
def cli():
    """alpaca-ds: build instruction-following models the way Stanford Alpaca did, with DeepSpeed."""


@cli.command("quickstart")
@config_option("Quickstart YAML [default: launch/recipes/quickstart.yaml, paths from the repository].")
@SET
@click.option("--out", help="Run directory [default: runs/quickstart]; rerunning with it continues the run.")
@click.option("--quick", is_flag=True, help="The smaller variant (the config's `quick` section): CI, tests.")
def quickstart_command(config_path, overrides, out, quick):
    """The whole pipeline offline on CPU in a few minutes: generate, data build, train, export, evaluate.

    The local teacher simulator on a loopback port -> self-instruct data -> tokenized dataset -> the tiny recipe
    with ZeRO-3 on 2 CPU ranks through the deepspeed launcher -> verified export -> answers and a judged win rate
    -> OUT/report.md. Interrupted, the same command continues where it stopped. Exit status: 0 done,
    130 interrupted.
    """
    from alpaca_ds.quickstart import layout, pipeline
    from alpaca_ds.quickstart.config import QuickstartConfig

    cfg = load_config(
        QuickstartConfig,
        config_path,
        (*flags(out_dir=out), *overrides),
        defaults=None if config_path else layout.default_config(),
    )
    result = pipeline.run(cfg.with_quick() if quick else cfg, echo=lambda m: click.echo(m), quick=quick)
    if result.exit_code:  # why it stopped; when done, run() has already echoed its summary (the report's line)
        click.echo(result.summary(), err=True)
    sys.exit(result.exit_code)


for command in (
    data.data_group,
    *generate.COMMANDS,
    *train.COMMANDS,
    *evaluate.COMMANDS,
    release.release_group,
):
    cli.add_command(command)


def main():
    try:
        cli(standalone_mode=True)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Options and endings shared by the commands: `--config FILE` + repeatable `--set key=value`, command-line
shortcuts as --set items, and the exit of a run that can stop early."""

from __future__ import annotations

import sys

import click


def config_option(help: str, **kwargs):
    """`--config FILE` (into `config_path`), with the command's own help; kwargs: more click.option settings."""
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), help=help, **kwargs)


CONFIG = config_option("YAML config file (defaults apply to what it leaves out).")
SET = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set max_length=1024 (repeatable).",
)


def flags(**values) -> tuple[str, ...]:
    """Command-line shortcuts as `--set key=value` items (applied before the user's own --set items)."""
    return tuple(f"{key}={value}" for key, value in values.items() if value is not None)


def finish(result) -> None:
    """End a run that can stop early (generate, evaluate judge): its summary, why it stopped, its exit status.
    `result`: a stage's result, with `exit_code`, `message` and `summary()`."""
    if result.exit_code == 0:
        click.echo(f"done: {result.summary()}")
    else:
        click.echo(f"stopped: {result.message}", err=True)
        click.echo(result.summary(), err=True)
    sys.exit(result.exit_code)

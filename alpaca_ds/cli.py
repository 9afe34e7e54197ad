"""The `alpaca-ds` command: each command loads its config and calls one stage's run(); no logic lives here."""
from __future__ import annotations

import json
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


@cli.command("train")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Recipe YAML (launch/recipes/*.yaml).")
@SET
@click.option("--num-gpus", default=1, show_default=True, help="Processes (GPUs, or CPU ranks) on this machine.")
def train_command(config_path, overrides, num_gpus):
    """Fine-tune with DeepSpeed: checks the run, then starts the deepspeed launcher on this machine.

    Relaunching the same command resumes from the last complete checkpoint.
    """
    import subprocess

    from alpaca_ds.config import TrainConfig
    from alpaca_ds.train.ds_config import batch_arithmetic
    from alpaca_ds.train.loop import launcher_command, preflight
    cfg = load_config(TrainConfig, config_path, overrides)
    preflight(cfg, num_gpus)  # fail here, before the launcher and the model load
    click.echo(batch_arithmetic(cfg, num_gpus))
    command = launcher_command(config_path, overrides, num_gpus)
    click.echo("+ " + " ".join(command))
    sys.exit(subprocess.run(command).returncode)


@cli.command("export")
@click.argument("checkpoint", type=click.Path(file_okay=False, exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), help="Default: the run's export_dtype.")
def export_command(checkpoint, out, dtype):
    """Consolidate a training checkpoint (RUN/checkpoints/step-N) into a verified HF folder."""
    from pathlib import Path

    from alpaca_ds.train.export import export_checkpoint
    diff = export_checkpoint(Path(checkpoint), Path(out), dtype)
    click.echo(f"exported {out} (reloaded logits within {diff:.2g} of the checkpoint's weights)")


@cli.group("config")
def config_group():
    """Show resolved configurations."""


@config_group.command("render")
@click.argument("recipe", type=click.Path(dir_okay=False, exists=True))
@SET
@click.option("--world-size", default=8, show_default=True, help="Total GPUs of the run.")
def config_render(recipe, overrides, world_size):
    """Print the final DeepSpeed JSON of RECIPE for a world size."""
    from alpaca_ds.config import TrainConfig
    from alpaca_ds.train.ds_config import batch_arithmetic, build_ds_config
    cfg = load_config(TrainConfig, recipe, overrides)
    click.echo(f"# {batch_arithmetic(cfg, world_size)}", err=True)
    click.echo(json.dumps(build_ds_config(cfg, world_size), indent=2))


@cli.command("generate")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Generation recipe (launch/recipes/self_instruct_*.yaml).")
@SET
@click.option("--dry-run", is_flag=True, help="Print the expected requests, tokens and dollars; send nothing.")
def generate_command(config_path, overrides, dry_run):
    """Self-instruct data from a teacher model, as Alpaca made it, within a hard budget.

    Rerunning the same command continues an interrupted or killed run in the same out_dir. Exit status: 0 when
    num_instructions (or max_requests) is reached, 3 when the budget stopped it, 4 after too many failed
    requests, 5 when the API refused the key or model, 130 when interrupted.
    """
    from alpaca_ds.config import GenerateConfig
    from alpaca_ds.generate import run as gen
    cfg = load_config(GenerateConfig, config_path, overrides)
    if dry_run:
        click.echo(gen.format_dry_run(gen.dry_run(cfg)))
        return
    result = gen.run(cfg)
    cost, stats = result["cost"], result["stats"]
    line = (f"{result['accepted']}/{result['target']} instructions in {cfg.out_dir} (regen.json, accepted.jsonl); "
            f"{stats['requests']['succeeded']} requests, {stats['requests']['retries']} retries, "
            f"{stats['requests']['failed']} failed; spent ${cost['spent_usd']:.4f} of ${cfg.budget.max_usd:g}")
    if result["exit_code"] == 0:
        click.echo(f"done: {line}")
    else:
        click.echo(f"stopped: {result['message']}", err=True)
        click.echo(line, err=True)
    sys.exit(result["exit_code"])


@cli.group("teacher")
def teacher_group():
    """A local SIMULATOR of an OpenAI-compatible teacher (for tests and offline runs)."""


@teacher_group.command("serve")
@click.option("--port", default=8765, show_default=True, help="TCP port; 0 picks a free one (printed).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--seeds", "seeds_path", default="seeds/seed_tasks.jsonl", show_default=True,
              type=click.Path(dir_okay=False), help="Seed tasks whose content the simulator recombines.")
@click.option("--seed", default=0, show_default=True, help="Seed of answers and fault draws.")
@click.option("--latency", default=0.0, show_default=True, help="Seconds before each answer.")
@click.option("--jitter", default=0.0, show_default=True, help="Latency varies by up to this many seconds.")
@click.option("--tasks", default=20, show_default=True, help="Number of the last task written in an answer.")
@click.option("--noise", default=0.2, show_default=True,
              help="Share of tasks written to be rejected (seed repeats, too short, blacklisted words, ...).")
@click.option("--fail-429", default=0.0, show_default=True, help="Share of requests answered 429 with Retry-After.")
@click.option("--retry-after", default=1.0, show_default=True, help="Seconds in the Retry-After header of a 429.")
@click.option("--fail-500", default=0.0, show_default=True, help="Share of requests answered 500.")
@click.option("--fail-timeout", default=0.0, show_default=True, help="Share of requests that hang (see --hang).")
@click.option("--hang", default=600.0, show_default=True, help="Seconds a hanging request hangs.")
@click.option("--fail-truncate", default=0.0, show_default=True,
              help="Share of answers cut short with finish_reason 'length'.")
@click.option("--fail-malformed", default=0.0, show_default=True, help="Share of answers with a broken JSON body.")
@click.option("--require-key", default=None, help="Answer 401 unless the bearer token is this.")
def teacher_serve(port, host, seeds_path, seed, latency, jitter, tasks, noise, fail_429, retry_after,
                  fail_500, fail_timeout, hang, fail_truncate, fail_malformed, require_key):
    """Serve a SIMULATED teacher (not a language model) on /v1/completions, /v1/chat/completions, /v1/models.

    It answers in Alpaca's response format by recombining seed tasks, deterministically per request, reports
    token usage (tiktoken), and injects faults on demand: 429 + Retry-After, 500, hangs, answers cut at
    max_tokens, malformed bodies. Point a generate config at it with api.base_url=http://127.0.0.1:PORT/v1.
    """
    from alpaca_ds.generate.teacher import Faults, serve
    faults = Faults(rate_429=fail_429, rate_500=fail_500, rate_timeout=fail_timeout, rate_truncate=fail_truncate,
                    rate_malformed=fail_malformed, retry_after=retry_after, hang_s=hang)
    if faults.total() > 1:
        raise UserError("the --fail-* rates add up to more than 1")
    serve(port, seeds_path, host=host, seed=seed, latency=latency, jitter=jitter, faults=faults,
          require_key=require_key, tasks=tasks, noise=noise,
          announce=lambda msg: click.echo(msg))


def main():
    try:
        cli(standalone_mode=True)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

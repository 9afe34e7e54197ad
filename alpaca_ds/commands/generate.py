"""`alpaca-ds generate` (self-instruct from a teacher, alpaca_ds/generate) and `teacher serve` (the local teacher
simulator, alpaca_ds/simulator)."""

from __future__ import annotations

import click

from alpaca_ds.commands.options import SET, config_option, finish
from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config


@click.command("generate")
@config_option("Generation recipe (launch/recipes/self_instruct_*.yaml).")
@SET
@click.option(
    "--dry-run", is_flag=True, help="Print the expected requests, tokens and dollars (online and batch); send nothing."
)
@click.option(
    "--cancel-batches",
    is_flag=True,
    help="api.transport batch: cancel the batches a stopped run left running, keep what they answered, and stop.",
)
def generate_command(config_path, overrides, dry_run, cancel_batches):
    """Self-instruct data from a teacher model, as Alpaca made it, within a hard budget.

    Rerunning the same command continues an interrupted or killed run in the same out_dir. Exit status: 0 when
    num_instructions (or max_requests) is reached, 3 when the budget stopped it, 4 after too many failed
    requests, 5 when the API refused the key or model, 130 when interrupted.
    """
    from alpaca_ds.generate import run as gen
    from alpaca_ds.generate.config import GenerateConfig

    cfg = load_config(GenerateConfig, config_path, overrides)
    if dry_run:
        click.echo(gen.format_dry_run(gen.dry_run(cfg)))
        return
    finish(gen.run(cfg, cancel_batches=cancel_batches))


def share(*decls: str, help: str):
    """A --fail-* style option: a share (0 to 1) of requests, answers or lines, none by default."""
    return click.option(*decls, default=0.0, show_default=True, help=help)


@click.group("teacher")
def teacher_group():
    """A local SIMULATOR of an OpenAI-compatible teacher (for tests and offline runs)."""


@teacher_group.command("serve")
@click.option("--port", default=8765, show_default=True, help="TCP port; 0 picks a free one (printed).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--seeds",
    "seeds_path",
    default="seeds/seed_tasks.jsonl",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Seed tasks whose content the simulator recombines.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of answers and fault draws.")
@click.option("--latency", default=0.0, show_default=True, help="Seconds before each answer.")
@click.option("--jitter", default=0.0, show_default=True, help="Latency varies by up to this many seconds.")
@click.option("--tasks", default=20, show_default=True, help="Number of the last task written in an answer.")
@click.option(
    "--noise",
    default=0.2,
    show_default=True,
    help="Share of tasks written to be rejected (seed repeats, too short, blacklisted words, ...).",
)
@share("--fail-429", "rate_429", help="Share of requests answered 429 with Retry-After.")
@click.option("--retry-after", default=1.0, show_default=True, help="Seconds in the Retry-After header of a 429.")
@share("--fail-500", "rate_500", help="Share of requests answered 500.")
@share("--fail-timeout", "rate_timeout", help="Share of requests that hang (see --hang).")
@click.option("--hang", "hang_s", default=600.0, show_default=True, help="Seconds a hanging request hangs.")
@share("--fail-truncate", "rate_truncate", help="Share of answers cut short with finish_reason 'length'.")
@share("--fail-malformed", "rate_malformed", help="Share of answers with a broken JSON body.")
@click.option("--require-key", default=None, help="Answer 401 unless the bearer token is this.")
@click.option(
    "--fail-first", default=0, show_default=True, help="Answer 429 to the first N attempts of every distinct request."
)
@click.option("--fail-matching", default=None, help="Answer 500, always, to prompts matching this regex.")
@click.option(
    "--price",
    nargs=2,
    type=float,
    default=None,
    help="Bill PROMPT COMPLETION dollars per 1M tokens [default: the price table's, for the model asked].",
)
@click.option("--batch-seconds", default=1.0, show_default=True, help="Seconds a batch stays in progress.")
@share("--batch-line-failure", help="Share of batch lines that fail (500).")
@click.option("--batch-fail", default=0, show_default=True, help="The first N batches fail whole.")
@click.option("--batch-expire", default=0, show_default=True, help="The next N batches expire, half answered.")
@click.option("--no-batch", is_flag=True, help="Serve no Batch API (/v1/files, /v1/batches answer 404).")
@click.option("--no-logprobs", is_flag=True, help="Answer without log-probabilities even when asked for them.")
@click.option(
    "--moderation-word",
    "moderation_words",
    multiple=True,
    help="/v1/moderations flags texts holding this word (repeatable).",
)
def teacher_serve(
    port,
    host,
    seeds_path,
    price,
    batch_seconds,
    batch_line_failure,
    batch_fail,
    batch_expire,
    no_batch,
    no_logprobs,
    **options,
):
    """Serve a SIMULATED teacher and judge (not a language model) on /v1/completions, /v1/chat/completions,
    /v1/models, /v1/moderations, and the Batch API (/v1/files, /v1/batches).

    It answers in Alpaca's response format by recombining seed tasks (a judge prompt gets a verdict),
    deterministically per request, reports token usage (tiktoken) and bills it (the Batch API at its price), and
    injects faults on demand: 429 + Retry-After, 500, hangs, answers cut at max_tokens, malformed bodies, failed
    batch lines, failed and expired batches. Point a config at it with api.base_url=http://127.0.0.1:PORT/v1.
    """
    from dataclasses import fields

    from alpaca_ds.api.prices import Price
    from alpaca_ds.simulator.batch import BatchBehaviour
    from alpaca_ds.simulator.local import build, serve
    from alpaca_ds.simulator.server import Faults

    # the fault options are named after Faults' fields, the others after build()'s keywords
    faults = Faults(**{field.name: options.pop(field.name) for field in fields(Faults)})
    if faults.total() > 1:
        raise UserError("the --fail-* rates add up to more than 1")
    batch = (
        None
        if no_batch
        else BatchBehaviour(
            seconds=batch_seconds, line_failure=batch_line_failure, fail_batches=batch_fail, expire_batches=batch_expire
        )
    )
    price = Price(*price, "--price") if price else None
    sim = build(seeds_path, faults=faults, price=price, batch=batch, logprobs=not no_logprobs, **options)
    serve(sim, port, host=host, announce=lambda msg: click.echo(msg))


COMMANDS = (generate_command, teacher_group)

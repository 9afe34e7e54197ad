"""The `alpaca-ds` command: each command loads its config and calls one stage's run(); no logic lives here."""

from __future__ import annotations

import json
import sys

import click

from alpaca_ds.commands import evaluate, release
from alpaca_ds.commands.options import CONFIG, SET, finish, flags
from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config
from alpaca_ds.dataset.config import DataBuildConfig


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
    manifest = build.run(cfg)
    c = manifest["counts"]
    splits = ", ".join(f"{n} {s['examples']} examples / {s['tokens']} tokens" for n, s in manifest["splits"].items())
    click.echo(
        f"built {cfg.output}: {c['records']} records -> {splits}; truncated {c['truncated']}, "
        f"dropped {c['dropped_overlength']}, invalid skipped {c['invalid_skipped']} "
        f"({manifest['seconds']} s, tokenizer via {manifest['tokenizer']['encoder']})"
    )


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
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Recipe YAML (launch/recipes/*.yaml).",
)
@SET
@click.option("--num-gpus", default=1, show_default=True, help="Processes (GPUs, or CPU ranks) on this machine.")
def train_command(config_path, overrides, num_gpus):
    """Fine-tune with DeepSpeed: checks the run, then starts the deepspeed launcher on this machine.

    Relaunching the same command resumes from the last complete checkpoint.
    """
    from alpaca_ds.cluster.launch import launcher_command, train_args
    from alpaca_ds.cluster.runner import run_launcher
    from alpaca_ds.train.config import TrainConfig
    from alpaca_ds.train.ds_config import batch_arithmetic
    from alpaca_ds.train.loop import preflight

    cfg = load_config(TrainConfig, config_path, overrides)
    preflight(cfg, num_gpus)  # fail here, before the launcher and the model load
    click.echo(batch_arithmetic(cfg, num_gpus))
    command = launcher_command(train_args(config_path, overrides), num_gpus=num_gpus)
    click.echo("+ " + " ".join(command))
    sys.exit(run_launcher(command, say=click.echo))


CLUSTER = [
    click.option(
        "--hostfile",
        type=click.Path(dir_okay=False, exists=True),
        help="MPI-style hostfile ('worker-0 slots=8' per line) naming the nodes.",
    ),
    click.option("--nodes", type=int, help="Number of nodes (without a hostfile)."),
    click.option("--gpus-per-node", type=int, help="GPUs per node (without a hostfile)."),
]


def cluster_options(f):
    for option in reversed(CLUSTER):
        f = option(f)
    return f


@cli.command("launch")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Recipe YAML (launch/recipes/*.yaml).",
)
@SET
@cluster_options
@click.option(
    "--node-rank",
    type=int,
    help="This node's rank: no-ssh mode, the same command run on every node (else pdsh/ssh from here).",
)
@click.option("--master-addr", help="Address of node 0 that every node reaches (no-ssh mode needs it).")
@click.option("--master-port", type=int, help="Rendezvous port on node 0 (default 29500).")
@click.option(
    "--launcher",
    "launcher_backend",
    type=click.Choice(["pdsh", "openmpi", "mvapich", "mpich", "impi", "slurm"]),
    help="DeepSpeed's multi-node backend for hostfile mode (default pdsh).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the commands and the DeepSpeed config; run nothing, write nothing."
)
def launch_command(
    config_path,
    overrides,
    hostfile,
    nodes,
    gpus_per_node,
    node_rank,
    master_addr,
    master_port,
    launcher_backend,
    dry_run,
):
    """Check a run for a cluster and start DeepSpeed's launcher: one node, a hostfile cluster, or one node of many.

    Checks the global batch for the cluster's world size (accumulation derived, or refused with the arithmetic),
    the engine config, and the dataset, model and tokenizer paths; writes OUTPUT_DIR/config.resolved.yaml,
    which every rank loads; runs the launcher. Relaunching the same command resumes the run.
    """
    from alpaca_ds.cluster import launch
    from alpaca_ds.train.config import TrainConfig

    cfg = load_config(TrainConfig, config_path, overrides)
    cluster = launch.cluster_from_options(hostfile, nodes, gpus_per_node, cfg.output_dir)
    plan = launch.prepare(
        config_path,
        overrides,
        cluster,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        launcher=launcher_backend,
        dry_run=dry_run,
    )
    if dry_run:
        click.echo(launch.format_dry_run(plan))
        return
    sys.exit(launch.run(plan, echo=click.echo))


@cli.command("plan")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Recipe YAML (launch/recipes/*.yaml).",
)
@SET
@cluster_options
@click.option("--arch", help="Architecture: a preset (llama-7b, llama-13b, ...) or a config.json / model folder.")
@click.option(
    "--dataset", type=click.Path(file_okay=False), help="Built dataset for steps and tokens (default: data.path)."
)
@click.option("--seq-len", type=int, help="Padded sequence length for activations (default: the longest row).")
@click.option("--gpu", "gpu_models", multiple=True, help="GPU model(s) to show (default: all known; repeatable).")
@click.option("--mfu", default=0.4, show_default=True, help="Assumed model FLOPs utilisation.")
@click.option(
    "--usd-per-gpu-hour", type=float, help="Price of a GPU-hour (default: an assumed list price per GPU model)."
)
@click.option(
    "--reserve-gib", default=2.0, show_default=True, help="GPU memory kept for CUDA context, NCCL, fragmentation."
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(
    config_path,
    overrides,
    hostfile,
    nodes,
    gpus_per_node,
    arch,
    dataset,
    seq_len,
    gpu_models,
    mfu,
    usd_per_gpu_hour,
    reserve_gib,
    as_json,
):
    """What a run needs per GPU (model states, activations), which GPUs it fits, how long it takes and costs."""
    from alpaca_ds.cluster import launch, plan, plan_table
    from alpaca_ds.train.config import TrainConfig

    cfg = load_config(TrainConfig, config_path, overrides)
    if hostfile is None and gpus_per_node is None:
        gpus_per_node = 8
    cluster = launch.cluster_from_options(hostfile, nodes, gpus_per_node)
    if cluster.gpus_per_node is None:
        raise UserError(f"{hostfile}: hosts with different slot counts; the plan needs the same GPUs per node")
    result = plan.make_plan(
        cfg,
        config_path,
        cluster.nodes,
        cluster.gpus_per_node,
        arch=arch,
        dataset=dataset,
        seq_len=seq_len,
        gpus=gpu_models,
        mfu=mfu,
        usd_per_gpu_hour=usd_per_gpu_hour,
        reserve_gib=reserve_gib,
    )
    click.echo(json.dumps(result, indent=2) if as_json else plan_table.format_plan(result))


@cli.command("export")
@click.argument("checkpoint", type=click.Path(file_okay=False, exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), help="Default: the run's export_dtype.")
def export_command(checkpoint, out, dtype):
    """Consolidate a training checkpoint (RUN/checkpoints/step-N) into a verified HF folder (a LoRA run's:
    OUT/adapter, and OUT/final merged)."""
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
    from alpaca_ds.train.config import TrainConfig
    from alpaca_ds.train.ds_config import batch_arithmetic, build_ds_config

    cfg = load_config(TrainConfig, recipe, overrides)
    click.echo(f"# {batch_arithmetic(cfg, world_size)}", err=True)
    click.echo(json.dumps(build_ds_config(cfg, world_size), indent=2))


@cli.command("generate")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Generation recipe (launch/recipes/self_instruct_*.yaml).",
)
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
    result = gen.run(cfg, cancel_batches=cancel_batches)
    cost, stats = result["cost"], result["stats"]
    finish(
        result,
        f"{result['accepted']}/{result['target']} instructions in {cfg.out_dir} (regen.json, "
        f"accepted.jsonl); {stats['requests']['succeeded']} requests, {stats['requests']['retries']} retries, "
        f"{stats['requests']['failed']} failed; spent ${cost['spent_usd']:.4f} of ${cfg.budget.max_usd:g}",
    )


@cli.group("teacher")
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
@click.option("--fail-429", default=0.0, show_default=True, help="Share of requests answered 429 with Retry-After.")
@click.option("--retry-after", default=1.0, show_default=True, help="Seconds in the Retry-After header of a 429.")
@click.option("--fail-500", default=0.0, show_default=True, help="Share of requests answered 500.")
@click.option("--fail-timeout", default=0.0, show_default=True, help="Share of requests that hang (see --hang).")
@click.option("--hang", default=600.0, show_default=True, help="Seconds a hanging request hangs.")
@click.option(
    "--fail-truncate", default=0.0, show_default=True, help="Share of answers cut short with finish_reason 'length'."
)
@click.option("--fail-malformed", default=0.0, show_default=True, help="Share of answers with a broken JSON body.")
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
@click.option("--batch-line-failure", default=0.0, show_default=True, help="Share of batch lines that fail (500).")
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
    seed,
    latency,
    jitter,
    tasks,
    noise,
    fail_429,
    retry_after,
    fail_500,
    fail_timeout,
    hang,
    fail_truncate,
    fail_malformed,
    require_key,
    fail_first,
    fail_matching,
    price,
    batch_seconds,
    batch_line_failure,
    batch_fail,
    batch_expire,
    no_batch,
    no_logprobs,
    moderation_words,
):
    """Serve a SIMULATED teacher and judge (not a language model) on /v1/completions, /v1/chat/completions,
    /v1/models, /v1/moderations, and the Batch API (/v1/files, /v1/batches).

    It answers in Alpaca's response format by recombining seed tasks (a judge prompt gets a verdict),
    deterministically per request, reports token usage (tiktoken) and bills it (the Batch API at its price), and
    injects faults on demand: 429 + Retry-After, 500, hangs, answers cut at max_tokens, malformed bodies, failed
    batch lines, failed and expired batches. Point a config at it with api.base_url=http://127.0.0.1:PORT/v1.
    """
    from alpaca_ds.api.prices import Price
    from alpaca_ds.simulator.batch import BatchBehaviour
    from alpaca_ds.simulator.local import build, serve
    from alpaca_ds.simulator.server import Faults

    faults = Faults(
        rate_429=fail_429,
        rate_500=fail_500,
        rate_timeout=fail_timeout,
        rate_truncate=fail_truncate,
        rate_malformed=fail_malformed,
        retry_after=retry_after,
        hang_s=hang,
        fail_first=fail_first,
        fail_matching=fail_matching,
    )
    if faults.total() > 1:
        raise UserError("the --fail-* rates add up to more than 1")
    batch = (
        None
        if no_batch
        else BatchBehaviour(
            seconds=batch_seconds, line_failure=batch_line_failure, fail_batches=batch_fail, expire_batches=batch_expire
        )
    )
    sim = build(
        seeds_path,
        seed=seed,
        tasks=tasks,
        noise=noise,
        latency=latency,
        jitter=jitter,
        faults=faults,
        require_key=require_key,
        price=Price(*price, "--price") if price else None,
        batch=batch,
        logprobs=not no_logprobs,
        moderation_words=moderation_words,
    )
    serve(sim, port, host=host, announce=lambda msg: click.echo(msg))


@cli.command("quickstart")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Quickstart YAML [default: launch/recipes/quickstart.yaml, paths from the repository].",
)
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
    if result["exit_code"]:
        click.echo(f"stopped: {result['message']}", err=True)
    sys.exit(result["exit_code"])


for command in (*evaluate.COMMANDS, release.release_group):
    cli.add_command(command)


def main():
    try:
        cli(standalone_mode=True)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

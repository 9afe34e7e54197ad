"""`alpaca-ds train`, `launch`, `plan`, `export` and `config render`: DeepSpeed runs on one machine or a cluster
(alpaca_ds/train, alpaca_ds/cluster)."""

from __future__ import annotations

import json
import sys

import click

from alpaca_ds.commands.options import SET, config_option
from alpaca_ds.common.errors import UserError
from alpaca_ds.config import load_config

RECIPE = config_option("Recipe YAML (launch/recipes/*.yaml).", required=True)


@click.command("train")
@RECIPE
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


@click.command("launch")
@RECIPE
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


@click.command("plan")
@RECIPE
@SET
@cluster_options
@click.option("--arch", help="Architecture: a preset (llama-7b, llama-13b, ...) or a config.json / model folder.")
@click.option(
    "--dataset", type=click.Path(file_okay=False), help="Built dataset for steps and tokens (default: data.path)."
)
@click.option("--seq-len", type=int, help="Padded sequence length for activations (default: the longest row).")
@click.option("--gpu", "gpus", multiple=True, help="GPU model(s) to show (default: all known; repeatable).")
@click.option("--mfu", default=0.4, show_default=True, help="Assumed model FLOPs utilisation.")
@click.option(
    "--usd-per-gpu-hour", type=float, help="Price of a GPU-hour (default: an assumed list price per GPU model)."
)
@click.option(
    "--reserve-gib", default=2.0, show_default=True, help="GPU memory kept for CUDA context, NCCL, fragmentation."
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(config_path, overrides, hostfile, nodes, gpus_per_node, as_json, **options):
    """What a run needs per GPU (model states, activations), which GPUs it fits, how long it takes and costs."""
    from alpaca_ds.cluster import launch, plan, plan_table
    from alpaca_ds.train.config import TrainConfig

    cfg = load_config(TrainConfig, config_path, overrides)
    if hostfile is None and gpus_per_node is None:
        gpus_per_node = 8
    cluster = launch.cluster_from_options(hostfile, nodes, gpus_per_node)
    if cluster.gpus_per_node is None:
        raise UserError(f"{hostfile}: hosts with different slot counts; the plan needs the same GPUs per node")
    # the other options are named after make_plan's keywords: arch, dataset, seq_len, gpus, mfu, usd_per_gpu_hour...
    result = plan.make_plan(cfg, config_path, cluster.nodes, cluster.gpus_per_node, **options)
    click.echo(json.dumps(result, indent=2) if as_json else plan_table.format_plan(result))


@click.command("export")
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


@click.group("config")
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


COMMANDS = (train_command, launch_command, plan_command, export_command, config_group)

"""`alpaca-ds launch`: the one builder of launcher commands, hostfiles, the global batch per world size, the checks
before a launch and the shell scripts. Real multi-node runs on this machine are tests/integration/test_multinode.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from alpaca_ds.cluster.launch import (
    Cluster,
    cluster_from_options,
    launcher_command,
    parse_hostfile,
    prepare,
    train_args,
)
from alpaca_ds.common.errors import UserError
from helpers.launching import ENV, cli
from helpers.paths import ROOT
from helpers.training import RECIPE, as_sets

ALPACA_7B = ROOT / "launch" / "recipes" / "alpaca_7b.yaml"


def launch_7b(nodes: int, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """`alpaca-ds launch` of the 7B recipe on `nodes` nodes of 8 GPUs each."""
    return cli("launch", "--config", str(ALPACA_7B), "--nodes", str(nodes), "--gpus-per-node", "8", *args, **kwargs)


# ---------------------------------------------------------------- commands and hostfiles


def test_one_builder_for_every_launch_mode():
    args = train_args("launch/recipes/tiny.yaml", ["optim.lr=1e-3"])
    single = launcher_command(args, num_gpus=2, python="python")
    # `alpaca-ds train` prints this form (tests/integration/test_train.py looks for it)
    assert " ".join(single) == (
        "python -m deepspeed.launcher.runner --num_gpus 2 --module alpaca_ds.train "
        "--config launch/recipes/tiny.yaml --set optim.lr=1e-3"
    )
    pdsh = launcher_command(
        ["--config", "c.yaml"], hostfile="hosts", master_addr="10.0.0.1", master_port=29500, python="python"
    )
    assert pdsh == [
        "python",
        "-m",
        "deepspeed.launcher.runner",
        "--hostfile",
        "hosts",
        "--master_addr",
        "10.0.0.1",
        "--master_port",
        "29500",
        "--module",
        "alpaca_ds.train",
        "--config",
        "c.yaml",
    ]
    no_ssh = launcher_command(
        ["--config", "c.yaml"],
        hostfile="hosts",
        node_rank=1,
        master_addr="10.0.0.1",
        master_port=29500,
        python="python",
    )
    assert no_ssh[3:9] == ["--hostfile", "hosts", "--no_ssh", "--node_rank", "1", "--master_addr"]
    # DeepSpeed's own parser accepts every form and reads what we meant
    from deepspeed.launcher.runner import parse_args

    parsed = parse_args(no_ssh[3:])
    assert (
        parsed.hostfile,
        parsed.no_ssh,
        parsed.node_rank,
        parsed.master_addr,
        parsed.master_port,
        parsed.module,
        parsed.user_script,
        parsed.user_args,
    ) == ("hosts", True, 1, "10.0.0.1", 29500, True, "alpaca_ds.train", ["--config", "c.yaml"])
    assert parse_args(single[3:]).num_gpus == 2


@pytest.mark.parametrize(
    "text",
    [
        "worker-0 slots=8\nworker-1 slots=8\n",
        "# the cluster\n\nnode-a slots=4   # a comment after\n  node-b slots=2\n",
        "10.0.0.1 slots=1\n",
    ],
)
def test_hostfile_is_read_as_deepspeed_reads_it(text):
    from deepspeed.launcher.runner import _parse_hostfile

    assert parse_hostfile(text) == tuple(_parse_hostfile(text.splitlines(keepends=True)).items())


@pytest.mark.parametrize(
    "text, message",
    [
        ("a slots=2\na slots=2\n", "host 'a' is listed twice"),
        ("a slots=2\nb\n", r"hosts:2: 'b' is not 'HOSTNAME slots=N'"),
        ("# nothing\n", "no hosts"),
        ("a slots=0\n", "has no slots"),
    ],
)
def test_bad_hostfiles_are_refused_with_the_line(text, message):
    with pytest.raises(UserError, match=message):
        parse_hostfile(text, "hosts")


def test_cluster_descriptions(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("a slots=8\nb slots=8\n")
    c = cluster_from_options(str(hosts), None, None)
    assert (c.world, c.nodes, c.gpus_per_node, c.hostfile, c.synthetic) == (16, 2, 8, str(hosts), False)
    c = cluster_from_options(None, 2, 4, tmp_path / "run")
    assert (c.world, c.hostfile, c.synthetic) == (8, str(tmp_path / "run" / "hostfile"), True)
    assert cluster_from_options(None, None, 8) == Cluster((("localhost", 8),))
    with pytest.raises(UserError, match="not both"):
        cluster_from_options(str(hosts), 2, None)
    with pytest.raises(UserError, match="--gpus-per-node"):
        cluster_from_options(None, 2, None)


# ---------------------------------------------------------------- the global batch per world size


@pytest.mark.parametrize("nodes, gpus", [(1, 1), (1, 2), (1, 4), (1, 8), (2, 8), (4, 8)])
def test_global_batch_128_holds_for_1_to_32_gpus(nodes, gpus, tmp_path):
    cluster = cluster_from_options(None, nodes, gpus, tmp_path)
    launch = prepare(str(ALPACA_7B), [f"output_dir={tmp_path / 'run'}"], cluster, dry_run=True)
    ds, world = launch.ds_config, nodes * gpus
    assert ds["train_batch_size"] == 128
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world == 128
    assert launch.arithmetic == (
        f"global batch 128 = micro-batch {ds['train_micro_batch_size_per_gpu']} x "
        f"accumulation {ds['gradient_accumulation_steps']} x world {world}"
    )
    assert len(launch.commands) == nodes  # one command, or one per node in no-ssh mode


def test_impossible_world_is_refused_with_the_arithmetic(tmp_path):
    result = launch_7b(3, "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "global_batch_size 128 / (micro_batch_size 4 x world 24 = 96) = 1.33333 is not a whole number of "
        "accumulation steps; no micro-batch size works: 128 is not divisible by 24 GPUs"
    ) in result.stderr
    # a fixed accumulation that does not fit this world is refused too, not silently changed
    result = launch_7b(2, "--dry-run", "--set", "batch.gradient_accumulation_steps=4")
    assert result.returncode == 2
    assert (
        "micro_batch_size 4 x gradient_accumulation_steps 4 x world 16 = 256, not global_batch_size 128"
        in result.stderr
    )
    # a micro-batch that cannot divide evenly is refused with the sizes that would
    result = launch_7b(1, "--dry-run", "--set", "batch.micro_batch_size=3")
    assert result.returncode == 2 and "micro_batch_size values that work on 8 GPUs: 1, 2, 4, 8, 16" in result.stderr


# ---------------------------------------------------------------- dry run and checks before a launch


def test_dry_run_7b_on_2x8(tmp_path):
    run = tmp_path / "run"
    result = launch_7b(
        2,
        "--dry-run",
        *as_sets([f"output_dir={run}", f"data.path={tmp_path / 'absent'}"]),
        env={**{k: v for k, v in ENV.items() if k != "DS_ACCELERATOR"}, "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "on 2 nodes (2 x 8 = 16 GPUs)" in out
    assert "# global batch 128 = micro-batch 4 x accumulation 2 x world 16" in out
    assert f"# warning: data.path: {tmp_path / 'absent'}: no manifest.json" in out
    assert (
        "# warning: model.name_or_path 'huggyllama/llama-7b': not a local folder and not in the Hugging Face cache"
        in out
    )
    for rank in (0, 1):
        assert (
            f"-m deepspeed.launcher.runner --hostfile {run}/hostfile --no_ssh --node_rank {rank} --master_addr "
            f'"$MASTER_ADDR" --master_port 29500 --module alpaca_ds.train --config {run}/config.resolved.yaml'
        ) in out
    ds = json.loads(out[out.index("\n{") + 1 :])
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        128,
        4,
        2,
    )
    assert ds["optimizer"]["params"]["torch_adam"] is False  # what the ranks on GPU nodes build
    assert ds["zero_optimization"]["stage"] == 3
    assert not run.exists()  # a dry run writes nothing


def test_real_launch_refuses_missing_paths_before_the_launcher(tmp_path):
    start = time.time()
    result = launch_7b(
        1,
        *as_sets([f"output_dir={tmp_path / 'run'}", f"data.path={tmp_path / 'absent'}"]),
        env={**ENV, "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: cannot launch:" in result.stderr
    assert "data.path:" in result.stderr and "model.name_or_path 'huggyllama/llama-7b'" in result.stderr
    assert "deepspeed.launcher" not in result.stdout and not (tmp_path / "run").exists()
    assert time.time() - start < 120


def test_no_ssh_needs_master_addr_and_each_node_its_rank(tmp_path):
    cluster = cluster_from_options(None, 2, 1, tmp_path)
    overrides = [f"output_dir={tmp_path / 'run'}"]
    with pytest.raises(UserError, match="--master-addr ADDR"):
        prepare(str(RECIPE), overrides, cluster, node_rank=0)
    with pytest.raises(UserError, match="run this command on every node with --node-rank"):
        prepare(str(RECIPE), overrides, cluster, master_addr="127.0.0.1")
    with pytest.raises(UserError, match="--node-rank 2: the cluster has 2 node"):
        prepare(str(RECIPE), overrides, cluster, node_rank=2, master_addr="127.0.0.1")


@pytest.mark.slow
def test_shell_scripts_build_the_same_commands(sample_dataset, tmp_path):
    for script in ("single_node.sh", "multi_node.sh", "slurm.sbatch", "slurm_local.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / "launch" / script)]).returncode == 0, script
    sets = ["--set", f"output_dir={tmp_path / 'run'}", "--set", f"data.path={sample_dataset}", "--dry-run"]
    env = {**ENV, "RECIPE": "launch/recipes/tiny.yaml", "GPUS_PER_NODE": "2", "MASTER_PORT": "29999"}
    one = subprocess.run(
        ["bash", str(ROOT / "launch" / "single_node.sh"), *sets], env=env, capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr
    assert "deepspeed.launcher.runner --num_gpus 2 --master_port 29999 --module alpaca_ds.train" in one.stdout
    assert "# warning" not in one.stdout
    hosts = tmp_path / "hosts"
    hosts.write_text("n0 slots=1\nn1 slots=1\n")
    many = subprocess.run(
        ["bash", str(ROOT / "launch" / "multi_node.sh"), *sets],
        env={**env, "HOSTFILE": str(hosts), "NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert many.returncode == 0, many.stderr
    assert (
        f"--hostfile {hosts} --no_ssh --node_rank 1 --master_addr 127.0.0.1 --master_port 29999 --module "
        "alpaca_ds.train"
    ) in many.stdout
    assert "global batch 8 = micro-batch 2 x accumulation 2 x world 2" in many.stdout


def test_launch_and_plan_import_no_deepspeed():
    code = (
        "import sys, alpaca_ds.cluster.launch, alpaca_ds.cluster.plan; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert not {"deepspeed", "torch", "transformers"} & set(loaded.stdout.split())

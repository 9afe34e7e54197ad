"""`alpaca-ds launch`: the one place that builds `deepspeed` launcher commands, for one node or many.

    alpaca-ds launch --config launch/recipes/alpaca_7b.yaml --nodes 1 --gpus-per-node 8
    alpaca-ds launch --config launch/recipes/alpaca_7b.yaml --hostfile hostfile            # pdsh/ssh starts every node
    alpaca-ds launch --config launch/recipes/alpaca_7b.yaml --hostfile hostfile --node-rank 1 --master-addr 10.0.0.1
    alpaca-ds launch --config launch/recipes/alpaca_7b.yaml --nodes 2 --gpus-per-node 8 --dry-run

Before anything starts it checks the run's arithmetic for the cluster's world size (micro-batch x accumulation x
world = global batch, the accumulation derived from the world size or the launch refused with the arithmetic),
DeepSpeed's schema check of the engine config, and that the dataset, model and tokenizer are where the recipe
says (on this machine; the other nodes are assumed to see the same paths). It then writes
`<output_dir>/config.resolved.yaml`, the exact config every rank loads, and runs the launcher.

Three ways to start a cluster, all with DeepSpeed's own launcher (`python -m deepspeed.launcher.runner`):
- one node: `--nodes 1 --gpus-per-node G` (the launcher's `--num_gpus`);
- pdsh/ssh: `--hostfile H` on the first node; DeepSpeed's runner ssh-es into every host of H (passwordless ssh
  and `pdsh` needed) and starts that node's processes;
- no-ssh: the same command with `--node-rank R` run on every node (by hand, a scheduler or SLURM's srun), the
  launcher's `--no_ssh --node_rank` mode; `--nodes N --gpus-per-node G` without a hostfile writes one
  (`<output_dir>/hostfile`, names node-0..node-N-1: in this mode DeepSpeed only counts and orders them).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alpaca_ds.cluster.runner import run_launcher
from alpaca_ds.common.errors import UserError
from alpaca_ds.config import dump_config, load_config
from alpaca_ds.train.config import TrainConfig

MODULE = "alpaca_ds.train"
DEFAULT_MASTER_PORT = 29500  # DeepSpeed's (and torch.distributed's) default
RESOLVED = "config.resolved.yaml"
# DeepSpeed's runner reads a hostfile with this pattern (deepspeed/launcher/runner.py, _parse_hostfile).
_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\d+)")


# ---------------------------------------------------------------- the launcher command


def launcher_command(
    module_args: Sequence[str],
    *,
    num_gpus: int | None = None,
    hostfile: str | None = None,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    launcher: str | None = None,
    python: str | None = None,
) -> list[str]:
    """The deepspeed launcher command that runs `python -m alpaca_ds.train MODULE_ARGS` on a cluster.

    Without a hostfile: `num_gpus` processes on this machine. With one: every host in it, started over pdsh/ssh
    from here, or (with `node_rank`) only this node's processes (`--no_ssh`), the command run on every node.
    """
    command = [python or sys.executable, "-m", "deepspeed.launcher.runner"]
    if hostfile is None:
        if num_gpus is None:
            raise ValueError("launcher_command needs num_gpus or a hostfile")
        command += ["--num_gpus", str(num_gpus)]
    else:
        command += ["--hostfile", str(hostfile)]
        if node_rank is not None:
            command += ["--no_ssh", "--node_rank", str(node_rank)]
        if launcher:
            command += ["--launcher", launcher]
    if master_addr:
        command += ["--master_addr", master_addr]
    if master_port is not None:
        command += ["--master_port", str(master_port)]
    return command + ["--module", MODULE, *module_args]


def train_args(config_path: str | Path, overrides: Sequence[str] = ()) -> list[str]:
    """The arguments of `python -m alpaca_ds.train` for a recipe and its `--set` overrides."""
    args = ["--config", str(config_path)]
    for item in overrides:
        args += ["--set", item]
    return args


# ---------------------------------------------------------------- hostfiles


@dataclass(frozen=True)
class Cluster:
    """Hosts in launch order with their GPU slots; `hostfile` is the file the launcher reads (None: this machine)."""

    hosts: tuple[tuple[str, int], ...]
    hostfile: str | None = None
    synthetic: bool = False  # the hostfile is written by the launch (no-ssh mode, names only count)

    @property
    def world(self) -> int:
        return sum(slots for _, slots in self.hosts)

    @property
    def nodes(self) -> int:
        return len(self.hosts)

    @property
    def gpus_per_node(self) -> int | None:
        counts = {slots for _, slots in self.hosts}
        return counts.pop() if len(counts) == 1 else None

    def describe(self) -> str:
        per = self.gpus_per_node
        shape = f"{self.nodes} x {per}" if per is not None else " + ".join(str(s) for _, s in self.hosts)
        noun = "node" if self.nodes == 1 else "nodes"
        return f"{self.nodes} {noun} ({shape} = {self.world} GPUs)"


def parse_hostfile(text: str, source: str = "hostfile") -> tuple[tuple[str, int], ...]:
    """`host slots=N` lines (MPI style, as DeepSpeed reads them); comments and blank lines skipped."""
    hosts: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _HOST_LINE.search(line)
        if not match:
            raise UserError(f"{source}:{number}: {line!r} is not 'HOSTNAME slots=N'")
        host, slots = match.group(1), int(match.group(2))
        if host in hosts:
            raise UserError(f"{source}:{number}: host {host!r} is listed twice")
        if slots < 1:
            raise UserError(f"{source}:{number}: host {host!r} has no slots")
        hosts[host] = slots
    if not hosts:
        raise UserError(f"{source}: no hosts (expected lines like 'worker-0 slots=8')")
    return tuple(hosts.items())


def hostfile_text(hosts: Sequence[tuple[str, int]]) -> str:
    return "".join(f"{host} slots={slots}\n" for host, slots in hosts)


def read_hostfile(path: str | Path) -> Cluster:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"hostfile {path}: cannot read it ({e.strerror or e})") from None
    return Cluster(parse_hostfile(text, str(path)), hostfile=str(path))


def cluster_from_options(
    hostfile: str | None, nodes: int | None, gpus_per_node: int | None, run_dir: str | Path = "."
) -> Cluster:
    """The cluster of `--hostfile H` or `--nodes N --gpus-per-node G` (a hostfile in run_dir when N > 1)."""
    if hostfile is not None:
        if nodes is not None or gpus_per_node is not None:
            raise UserError(
                "give either --hostfile or --nodes/--gpus-per-node, not both: the hostfile already "
                "says how many nodes and GPUs there are"
            )
        return read_hostfile(hostfile)
    if gpus_per_node is None:
        raise UserError("say how many GPUs: --gpus-per-node G (and --nodes N), or --hostfile H")
    nodes = 1 if nodes is None else nodes
    if nodes < 1 or gpus_per_node < 1:
        raise UserError(f"--nodes {nodes} --gpus-per-node {gpus_per_node}: both must be at least 1")
    if nodes == 1:
        return Cluster((("localhost", gpus_per_node),))
    return Cluster(
        tuple((f"node-{i}", gpus_per_node) for i in range(nodes)),
        hostfile=str(Path(run_dir) / "hostfile"),
        synthetic=True,
    )


# ---------------------------------------------------------------- preparing a launch


@dataclass
class Launch:
    cfg: TrainConfig
    cluster: Cluster
    arithmetic: str
    ds_config: dict
    resolved_path: Path
    commands: list[tuple[int | None, list[str]]]  # (node rank or None for "this node drives all", command)
    node_rank: int | None
    mode: str  # "single-node", "pdsh", "no-ssh"
    problems: list[str] = field(default_factory=list)


def prepare(
    config_path: str,
    overrides: Sequence[str],
    cluster: Cluster,
    *,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    launcher: str | None = None,
    dry_run: bool = False,
) -> Launch:
    """Check everything that can be checked before the launch; a dry run turns path problems into warnings."""
    from alpaca_ds.train.ds_config import batch_arithmetic, build_ds_config

    cfg = load_config(TrainConfig, config_path, overrides)
    world = cluster.world
    arithmetic = batch_arithmetic(cfg, world)  # refuses an impossible combination with the arithmetic
    ds_config = build_ds_config(cfg, world)  # and DeepSpeed's own schema check of the engine YAML
    run_dir = Path(cfg.output_dir)
    resolved = run_dir / RESOLVED
    args = ["--config", str(resolved)]

    if node_rank is not None and not 0 <= node_rank < cluster.nodes:
        raise UserError(
            f"--node-rank {node_rank}: the cluster has {cluster.nodes} node(s), ranks 0..{cluster.nodes - 1}"
        )
    if cluster.hostfile is None:
        mode = "single-node"
        commands = [(None, launcher_command(args, num_gpus=world, master_addr=master_addr, master_port=master_port))]
    elif node_rank is None and not cluster.synthetic:
        mode = "pdsh"
        commands = [
            (
                None,
                launcher_command(
                    args,
                    hostfile=cluster.hostfile,
                    master_addr=master_addr,
                    master_port=master_port or DEFAULT_MASTER_PORT,
                    launcher=launcher,
                ),
            )
        ]
    else:
        mode = "no-ssh"
        addr = master_addr or ("$MASTER_ADDR" if dry_run else None)
        if addr is None:
            raise UserError(
                "no-ssh mode needs the address of node 0 that every node can reach: --master-addr ADDR "
                "(launch/multi_node.sh and launch/slurm.sbatch take it from $MASTER_ADDR)"
            )
        ranks = range(cluster.nodes) if node_rank is None else [node_rank]
        if node_rank is None and not dry_run:
            raise UserError(
                f"{cluster.describe()} without a hostfile of reachable hosts: run this command on every "
                "node with --node-rank 0, 1, ... (the launcher's no-ssh mode), or pass --hostfile for "
                "pdsh/ssh mode"
            )
        commands = [
            (
                r,
                launcher_command(
                    args,
                    hostfile=cluster.hostfile,
                    node_rank=r,
                    master_addr=addr,
                    master_port=master_port or DEFAULT_MASTER_PORT,
                ),
            )
            for r in ranks
        ]

    problems = check_paths(cfg)
    if mode == "pdsh" and not shutil.which("pdsh"):
        problems.append(
            "pdsh/ssh mode needs `pdsh` on this machine (apt-get install pdsh) and passwordless ssh to "
            "every host; or run the command on every node with --node-rank (no-ssh mode)"
        )
    if not problems:
        problems = _run_checks(cfg, world, here=mode != "pdsh")
    if problems and not dry_run:
        raise UserError("cannot launch:\n  " + "\n  ".join(problems))
    return Launch(cfg, cluster, arithmetic, ds_config, resolved, commands, node_rank, mode, problems)


def check_paths(cfg: TrainConfig) -> list[str]:
    """Problems with the dataset, model and tokenizer paths, checked without touching the network."""
    from alpaca_ds.dataset.shards import read_manifest

    problems = []
    try:
        read_manifest(cfg.data.path)
    except UserError as e:
        problems.append(f"data.path: {e}")
    if cfg.model.name_or_path is not None:
        why = _missing_model(cfg.model.name_or_path, "config.json")
        if why:
            problems.append(f"model.name_or_path {cfg.model.name_or_path!r}: {why}")
    if cfg.model.tokenizer is not None:
        why = _missing_model(cfg.model.tokenizer, "tokenizer_config.json", "tokenizer.model", "tokenizer.json")
        if why:
            problems.append(f"model.tokenizer {cfg.model.tokenizer!r}: {why}")
    return problems


def _missing_model(name_or_path: str, *files: str) -> str | None:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return None if any((path / f).is_file() for f in files) else f"the folder holds none of {', '.join(files)}"
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        return "no such folder"
    from huggingface_hub import try_to_load_from_cache

    try:
        if any(isinstance(try_to_load_from_cache(name_or_path, f), str) for f in files):
            return None
    except ValueError:  # not a valid hub id either
        return "no such folder, and not a Hugging Face hub id"
    return (
        "not a local folder and not in the Hugging Face cache of this machine; download it on every node "
        f"first (`hf download {name_or_path}`) or point the recipe at a folder, so that no rank downloads at "
        "start"
    )


def _run_checks(cfg: TrainConfig, world: int, here: bool) -> list[str]:
    """The trainer's own pre-flight (tokenizer of the dataset, output_dir of another run), before the launcher;
    `here`: ranks run on this machine (pdsh starts them on the hosts of the hostfile)."""
    from alpaca_ds.train.loop import preflight

    try:
        preflight(cfg, world, here=here)
    except UserError as e:
        return [str(e)]
    return []


# ---------------------------------------------------------------- output and running


def target_ds_config(launch: Launch) -> tuple[dict, str | None]:
    """The DeepSpeed config as the ranks will build it, and a note when it differs from this machine's."""
    ds = json.loads(json.dumps(launch.ds_config))
    on_gpus = os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    params = ds.get("optimizer", {}).get("params", {})
    # build_ds_config picks the optimizer kernel by the GPU of the machine it runs on; each rank builds its own.
    if params.get("torch_adam") is on_gpus:
        params["torch_adam"] = not on_gpus
        return ds, (
            f"optimizer.params.torch_adam is {not on_gpus} as the ranks on the GPU nodes set it (this "
            f"machine has no GPU and would say {on_gpus}); DS_ACCELERATOR=cpu renders a CPU run"
        )
    return ds, None


def format_dry_run(launch: Launch) -> str:
    cfg, cluster = launch.cfg, launch.cluster
    how = {
        "single-node": "one launcher on this machine",
        "pdsh": f"one launcher here; DeepSpeed starts every host of {cluster.hostfile} over pdsh/ssh",
        "no-ssh": "one launcher per node: run node r's command on node r (the launcher's no-ssh mode)",
    }
    lines = [
        f"# alpaca-ds launch --dry-run: {cfg.output_dir} on {cluster.describe()}, {how[launch.mode]}",
        f"# {launch.arithmetic}",
    ]
    lines += [f"# warning: {p}" for p in launch.problems]
    writes = [str(launch.resolved_path)] + ([cluster.hostfile] if cluster.synthetic else [])
    lines.append(f"# a launch writes {' and '.join(writes)}, then runs:")
    if cluster.synthetic:
        lines.append(f"# {cluster.hostfile}: " + hostfile_text(cluster.hosts).strip().replace("\n", "; "))
    for rank, command in launch.commands:
        if rank is not None:
            lines.append(f"# node {rank}:")
        lines.append(_shell(command))
    ds, note = target_ds_config(launch)
    lines.append(f"# DeepSpeed config (ds_config.json of the run){': ' + note if note else ''}")
    lines.append(json.dumps(ds, indent=2))
    return "\n".join(lines)


def _shell(command: Sequence[str]) -> str:
    # "$MASTER_ADDR" stays a shell variable in the printed command
    return " ".join(a if a == "$MASTER_ADDR" else shlex.quote(a) for a in command).replace(
        "$MASTER_ADDR", '"$MASTER_ADDR"'
    )


def run(launch: Launch, echo=print) -> int:
    """Write the resolved config (and a generated hostfile), then run this node's launcher command."""
    from alpaca_ds.common.io import atomic_write_bytes

    run_dir = launch.resolved_path.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(launch.resolved_path, dump_config(launch.cfg).encode())
    if launch.cluster.synthetic:
        atomic_write_bytes(Path(launch.cluster.hostfile), hostfile_text(launch.cluster.hosts).encode())
    ((rank, command),) = launch.commands  # prepare() leaves exactly one for a real launch
    echo(launch.arithmetic)
    echo("+ " + _shell(command))
    return run_launcher(command, say=echo)

"""`alpaca-ds launch` for real, multi-node on this machine; each run's losses equal a one-node run's with the same
world size and global batch:

- two launchers (node ranks 0 and 1, DeepSpeed's no-ssh mode, master 127.0.0.1) train the tiny recipe to the end
  with checkpoints;
- pdsh/ssh mode, two "hosts" that are this machine, when pdsh and openssh-server are installed and this is root;
- launch/slurm.sbatch under a real SLURM (Debian's slurm-wlm, two slurmd on this host via launch/slurm_local.sh),
  when slurm is installed and this is root; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from alpaca_ds.common.serving import free_port
from helpers.launching import ENV, cli
from helpers.paths import ROOT
from helpers.training import RECIPE, as_sets, metrics

pytestmark = pytest.mark.slow


def launch_args(run: Path, dataset: Path, *options: str, port: int | None = None) -> list[str]:
    """`launch` of the tiny recipe into `run` from `dataset` with these cluster `options`, as CLI arguments."""
    sets = as_sets([f"output_dir={run}", f"data.path={dataset}"])
    return ["launch", "--config", str(RECIPE), *options, "--master-port", str(port or free_port()), *sets]


# ---------------------------------------------------------------- two nodes on one machine, DeepSpeed's no-ssh mode


@pytest.fixture(scope="module")
def one_node_run(dataset, tmp_path_factory) -> Path:
    """The reference: one node of 2 ranks, through `alpaca-ds launch`."""
    run = tmp_path_factory.mktemp("one-node") / "run"
    result = cli(*launch_args(run, dataset, "--nodes", "1", "--gpus-per-node", "2"), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "+ " in result.stdout and "--num_gpus 2" in result.stdout and "done: 42 steps" in result.stdout
    return run


def test_two_nodes_on_one_machine_equal_one_node(one_node_run, dataset, tmp_path):
    run = tmp_path / "two-nodes"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port, addr = free_port(), ("--master-addr", "127.0.0.1")  # where both nodes meet
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alpaca_ds.cli",
                *launch_args(run, dataset, "--hostfile", str(hostfile), "--node-rank", str(rank), *addr, port=port),
            ],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=900) for node in nodes]
    for rank, (node, (out, err)) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank}:\n{out[-3000:]}\n{err[-3000:]}"
        assert f"--no_ssh --node_rank {rank} --master_addr 127.0.0.1" in out
    assert "done: 42 steps" in outputs[0][0]  # rank 0 of the world lives on node 0
    ours = [(r["step"], r["loss"], r.get("val_loss")) for r in metrics(run)]
    theirs = [(r["step"], r["loss"], r.get("val_loss")) for r in metrics(one_node_run)]
    assert len(ours) == 42 and ours == theirs  # exactly: same world size, global batch, data order
    checkpoints = run / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step-00000042"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000040", "step-00000042"]
    assert (run / "final" / "model.safetensors").is_file()
    assert (run / "config.resolved.yaml").read_text() == (one_node_run / "config.resolved.yaml").read_text().replace(
        str(one_node_run), str(run)
    )


# ---------------------------------------------------------------- pdsh/ssh mode, for real, when sshd and pdsh are here


@pytest.fixture
def ssh_to_localhost(tmp_path):
    """A private sshd on a free loopback port, key login only, and an `ssh` on PATH that uses it."""
    if not (shutil.which("pdsh") and Path("/usr/sbin/sshd").is_file() and shutil.which("ssh-keygen")):
        pytest.skip("pdsh/ssh mode needs pdsh and openssh-server (apt-get install pdsh openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("a private sshd for root needs root")
    d = tmp_path / "ssh"
    (d / "bin").mkdir(parents=True)
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/id.pub\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"StrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n"
    )
    (d / "ssh_config").write_text(
        f"Host *\n  Port {port}\n  IdentityFile {d}/id\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n"
    )
    wrapper = d / "bin" / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {d}/ssh_config "$@"\n')
    wrapper.chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    subprocess.run(["/usr/sbin/sshd", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")], check=True)
    try:
        env = {**ENV, "PATH": f"{d / 'bin'}:{ENV['PATH']}"}
        for _ in range(50):
            if subprocess.run(["ssh", "localhost", "true"], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        yield env
    finally:
        if (d / "sshd.pid").is_file():
            os.kill(int((d / "sshd.pid").read_text()), 15)


def test_pdsh_mode_two_hosts_equal_one_node(ssh_to_localhost, one_node_run, dataset, tmp_path):
    # two "hosts" that are this machine under two names; DeepSpeed's runner ssh-es into each with pdsh
    run = tmp_path / "pdsh-run"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\nlocalhost slots=1\n")
    options = ("--hostfile", str(hostfile), "--master-addr", "127.0.0.1")
    result = cli(*launch_args(run, dataset, *options), env=ssh_to_localhost, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cmd = pdsh -S -f 1024 -w 127.0.0.1,localhost" in result.stdout + result.stderr
    ours = [(r["step"], r["loss"], r.get("val_loss")) for r in metrics(run)]
    theirs = [(r["step"], r["loss"], r.get("val_loss")) for r in metrics(one_node_run)]
    assert ours == theirs
    assert (run / "checkpoints" / "latest").read_text() == "step-00000042"


# ---------------------------------------------------------------- SLURM, for real, when it is here


def _slurm_available() -> str | None:
    if not shutil.which("sbatch") or not shutil.which("slurmctld"):
        return "SLURM is not installed (apt-get install slurm-wlm)"
    if os.geteuid() != 0:
        return "a one-machine SLURM needs root to start its daemons"
    return None


@pytest.fixture
def slurm():
    why = _slurm_available()
    if why:
        pytest.skip(why)
    # not under pytest's tmp_path: its folders are private to root and munged runs as the munge user
    folder = Path(tempfile.mkdtemp(prefix="alpaca-ds-slurm-"))
    folder.chmod(0o755)
    env = {**ENV, "SLURM_LOCAL_DIR": str(folder), "NODES": "2"}
    try:
        started = subprocess.run(
            ["bash", str(ROOT / "launch" / "slurm_local.sh"), "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if started.returncode != 0:
            pytest.skip(f"a one-machine SLURM did not start here: {started.stderr.strip()[-500:]}")
        yield {**ENV, "SLURM_CONF": started.stdout.strip().split("=", 1)[1]}
    finally:
        subprocess.run(["bash", str(ROOT / "launch" / "slurm_local.sh"), "stop"], env=env, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_slurm_sbatch_two_nodes_equal_one_node(slurm, one_node_run, dataset, tmp_path):
    run = tmp_path / "slurm-run"
    env = {
        **slurm,
        "RECIPE": "launch/recipes/tiny.yaml",
        "GPUS_PER_NODE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    log = tmp_path / "slurm-%j.out"
    result = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--nodes",
            "2",
            "--gpus-per-node=0",
            f"--output={log}",
            str(ROOT / "launch" / "slurm.sbatch"),
            "--set",
            f"output_dir={run}",
            "--set",
            f"data.path={dataset}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert result.returncode == 0, result.stderr + out[-3000:]
    assert "on 2 node(s) x 1 GPUs" in out and "--no_ssh --node_rank 1" in out and "--no_ssh --node_rank 0" in out
    ours = [(r["step"], r["loss"], r.get("val_loss")) for r in metrics(run)]
    theirs = [(r["step"], r["loss"], r.get("val_loss")) for r in metrics(one_node_run)]
    assert ours == theirs
    assert (run / "checkpoints" / "latest").read_text() == "step-00000042"

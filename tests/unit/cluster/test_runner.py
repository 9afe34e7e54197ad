"""The launcher runner (alpaca_ds.cluster.runner): exit status, the log, and that no process of the group outlives
an interrupt or a killed caller. Stand-in launchers are small Python scripts that start a child of their own, as
DeepSpeed's launcher starts its ranks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from alpaca_ds.cluster.runner import run_launcher, stop_leftover

# a "launcher" that starts a "rank" in its own process group, records both pids, and waits
LAUNCHER = """
import json, subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "MARKER"])
open(sys.argv[1], "w").write(json.dumps([__import__("os").getpid(), rank.pid]))
print("rank started", flush=True)
rank.wait()
"""


def _wait_for(path: Path, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def _gone(pids: list[int], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_exit_status_and_log(tmp_path):
    log = tmp_path / "logs" / "train.log"
    code = run_launcher([sys.executable, "-c", "print('hello from a rank'); raise SystemExit(3)"], log_path=log)
    assert code == 3
    assert "hello from a rank" in log.read_text()


def test_sigterm_to_the_caller_stops_every_process_of_the_group(tmp_path):
    pids_file = tmp_path / "pids.json"
    caller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from alpaca_ds.cluster.runner import run_launcher; "
                f"sys.exit(run_launcher([sys.executable, '-c', {LAUNCHER!r}, {str(pids_file)!r}], marker='', "
                "say=lambda m: None))"
            ),
        ]
    )
    pids = _wait_for(pids_file)
    assert all(psutil.pid_exists(p) for p in pids)
    caller.send_signal(signal.SIGTERM)
    caller.wait(timeout=60)
    assert caller.returncode != 0
    assert _gone(pids), f"processes {pids} outlived the runner"


def test_a_killed_caller_leaves_a_group_the_next_run_stops(tmp_path):
    pids_file, pid_file = tmp_path / "pids.json", tmp_path / "train.pid.json"
    caller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from pathlib import Path; from alpaca_ds.cluster.runner import run_launcher; "
                f"run_launcher([sys.executable, '-c', {LAUNCHER!r}, {str(pids_file)!r}], marker='MARKER', "
                f"pid_file=Path({str(pid_file)!r}))"
            ),
        ]
    )
    pids = _wait_for(pids_file)
    caller.kill()  # SIGKILL: no cleanup; the group is left running, recorded in the pid file
    caller.wait()
    assert pid_file.is_file() and all(psutil.pid_exists(p) for p in pids)
    stop_leftover(pid_file, "not this run's marker", say=lambda m: None)  # another run's group: left alone
    assert psutil.pid_exists(pids[1]) and not pid_file.exists()
    pid_file.write_text(json.dumps({"pgid": pids[0]}))
    said = []
    stop_leftover(pid_file, "MARKER", say=said.append)
    assert _gone(pids) and not pid_file.exists()
    assert "stopping the training" in said[0]

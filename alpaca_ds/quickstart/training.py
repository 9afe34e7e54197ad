"""The quickstart's training step: DeepSpeed's own launcher in a process group of its own, stopped cleanly.

The launcher (`python -m deepspeed.launcher.runner`, command from alpaca_ds.cluster.launch.launcher_command) starts
`deepspeed.launcher.launch`, which starts one process per rank. All of them are put in a new process group, so:
  * an interrupt of the quickstart (Ctrl-C, SIGTERM) stops the whole group (SIGINT, then SIGTERM, then SIGKILL)
    and no rank outlives it;
  * a quickstart killed outright (SIGKILL) leaves the group running; the group is recorded in RUN/train.pid.json,
    and the next quickstart in RUN stops what is left of it (only processes whose command line names this run's
    train.yaml) before it resumes the training from its last checkpoint.
Everything the launcher and the ranks print goes to RUN/run/train.log; the terminal gets the ranks' progress bar,
warnings and errors, and the trainer's own lines, without DeepSpeed's INFO and WARNING log lines.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# DeepSpeed's logger lines below ERROR ("[2026-11-25 20:27:37,699] [INFO] [launch.py:285:main] ..."): the log only
_DS_LOG = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[(INFO|DEBUG|WARNING)\]")


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in process group `pgid`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        members.append((int(entry.name), cmdline))
    return members


def stop_group(pgid: int, marker: str, say=print, grace: float = 20.0) -> None:
    """Stop the processes of group `pgid` whose command line contains `marker`: SIGINT (DeepSpeed's launcher stops
    its ranks on it), then SIGTERM, then SIGKILL, each after a grace period."""
    if not Path("/proc").is_dir():  # no /proc to read command lines from (macOS): the group is the launch's own
        _stop_whole_group(pgid, grace)
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        ours = [pid for pid, cmd in group_members(pgid) if marker in cmd]
        if not ours:
            return
        for pid in ours:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(marker in cmd for _, cmd in group_members(pgid)):
            time.sleep(0.2)
    left = [pid for pid, cmd in group_members(pgid) if marker in cmd]
    if left:
        say(f"warning: training processes {left} did not stop")


def _stop_whole_group(pgid: int, grace: float) -> None:
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.2)


def stop_leftover(pid_file: Path, marker: str, say=print) -> None:
    """Stop a training a killed quickstart left running (recorded in pid_file), then forget it."""
    if not pid_file.is_file():
        return
    try:
        pgid = int(json.loads(pid_file.read_text())["pgid"])
    except (ValueError, KeyError, TypeError):
        pid_file.unlink(missing_ok=True)
        return
    if not Path("/proc").is_dir():
        pid_file.unlink(missing_ok=True)  # cannot tell whether the group is still ours: leave it alone
        return
    if any(marker in cmd for _, cmd in group_members(pgid)):
        say(f"stopping the training an interrupted quickstart left running (process group {pgid}); it resumes "
            "from its last checkpoint")
        stop_group(pgid, marker, say)
    pid_file.unlink(missing_ok=True)


def _pump(stream, log, out, keep) -> None:
    """Copy `stream` to `log` whole and to `out` (the terminal) where `keep(chunk)`; \\r-updates pass at once."""
    pending = b""
    while True:
        data = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not data:
            break
        log.write(data)
        log.flush()
        pending += data
        # split after every \n or \r, so a progress bar's \r-updates reach the terminal as they come
        parts = re.split(rb"(?<=[\r\n])", pending)
        pending = parts.pop()
        shown = b"".join(p for p in parts if keep(p))
        if shown:
            out.write(shown)
            out.flush()
    if pending and keep(pending):
        out.write(pending)
        out.flush()


class _TextOut:
    """Bytes to a text stream without a binary buffer (e.g. one a test harness swapped in)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8", errors="replace"))

    def flush(self) -> None:
        self.stream.flush()


def _binary(stream):
    return getattr(stream, "buffer", None) or _TextOut(stream)


def run_launcher(command: list[str], env: dict, log_path: Path, pid_file: Path, marker: str, say=print) -> int:
    """Run the launcher command to its end; its exit status. On an interrupt, stop the ranks and re-raise."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n+ {' '.join(command)}\n".encode())
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        pid_file.write_text(json.dumps({"pgid": proc.pid, "quickstart_pid": os.getpid(), "command": command}) + "\n")
        lock = threading.Lock()

        class Locked:  # both pumps write to one log file
            def write(self, data):
                with lock:
                    log.write(data)

            def flush(self):
                with lock:
                    log.flush()

        muted = threading.Event()  # once stopping: the ranks' and launcher's interrupt tracebacks go to the log only
        pumps = [threading.Thread(target=_pump, args=(proc.stdout, Locked(), _binary(sys.stdout),
                                                       lambda line: not muted.is_set() and not _DS_LOG.match(line)),
                                  daemon=True),
                 threading.Thread(target=_pump, args=(proc.stderr, Locked(), _binary(sys.stderr),
                                                       lambda chunk: not muted.is_set()), daemon=True)]
        for p in pumps:
            p.start()
        try:
            code = proc.wait()
        except BaseException:
            muted.set()
            say("stopping the training (it resumes from its last checkpoint when the quickstart is rerun) ...")
            stop_group(proc.pid, marker, say)
            proc.wait()
            raise
        finally:
            for p in pumps:
                p.join(10)
        # the launcher has exited; a rank it could not stop would be left in the group
        stop_group(proc.pid, marker, say, grace=5.0)
        pid_file.unlink(missing_ok=True)
        return code

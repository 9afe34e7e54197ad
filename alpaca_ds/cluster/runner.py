"""The one runner of DeepSpeed's launcher, for `train`, `launch` and the quickstart: a process group of its own,
stopped cleanly.

The launcher (`python -m deepspeed.launcher.runner`, command from alpaca_ds.cluster.launch.launcher_command) starts
`deepspeed.launcher.launch`, which starts one process per rank. All of them are put in a new process group, so:
  * an interrupt (Ctrl-C, or SIGTERM where the caller turns it into one) stops the whole group (SIGINT, then
    SIGTERM, then SIGKILL) and no rank outlives it;
  * a caller killed outright (SIGKILL) leaves the group running; with a pid file the group is recorded (the
    quickstart's RUN/train.pid.json), and the next run stops what is left of it (only processes whose command line
    names the run's config) before it resumes the training from its last checkpoint.
With a log file (the quickstart), everything the launcher and the ranks print goes there, and the terminal gets the
ranks' progress bar, warnings and errors, and the trainer's own lines, without DeepSpeed's INFO and WARNING lines.
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

import psutil

# DeepSpeed's logger lines below ERROR ("[2026-11-25 20:27:37,699] [INFO] [launch.py:285:main] ..."): the log only
_DS_LOG = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[(INFO|DEBUG|WARNING)\]")


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in process group `pgid`."""
    members = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or os.getpgid(proc.pid) != pgid:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        members.append((proc.pid, " ".join(proc.info["cmdline"] or ())))
    return members


def stop_group(pgid: int, marker: str = "", say=print, grace: float = 20.0) -> None:
    """Stop the processes of group `pgid` whose command line contains `marker`: SIGINT (DeepSpeed's launcher stops
    its ranks on it), then SIGTERM, then SIGKILL, each after a grace period."""
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


def stop_leftover(pid_file: Path, marker: str, say=print) -> None:
    """Stop a training a killed quickstart left running (recorded in pid_file), then forget it."""
    if not pid_file.is_file():
        return
    try:
        pgid = int(json.loads(pid_file.read_text())["pgid"])
    except (ValueError, KeyError, TypeError):
        pid_file.unlink(missing_ok=True)
        return
    if any(marker in cmd for _, cmd in group_members(pgid)):
        say(
            f"stopping the training an interrupted run left running (process group {pgid}); it resumes "
            "from its last checkpoint"
        )
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


def _sigterm_interrupts():
    """While the launcher runs, SIGTERM (a scheduler's stop, `kill`) stops the group as Ctrl-C does, unless the
    caller handles SIGTERM itself. Returns the handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def run_launcher(
    command: list[str],
    env: dict | None = None,
    *,
    marker: str = "",
    log_path: Path | None = None,
    pid_file: Path | None = None,
    say=print,
) -> int:
    """Run the launcher command to its end in a process group of its own; its exit status. On an interrupt, stop
    the launcher and its ranks (those whose command line holds `marker`) and re-raise.

    With `log_path`, everything goes to that file and the terminal gets only the ranks' progress, warnings and
    errors; without it, the launcher writes to the terminal directly. `pid_file` records the group so that a run
    killed outright can have its leftovers stopped (`stop_leftover`)."""
    logged = log_path is not None
    log = None
    if logged:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        log.write(f"\n+ {' '.join(command)}\n".encode())
    pipe = subprocess.PIPE if logged else None
    proc = subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe, start_new_session=True)
    if pid_file is not None:
        pid_file.write_text(json.dumps({"pgid": proc.pid, "runner_pid": os.getpid(), "command": command}) + "\n")
    muted = threading.Event()  # once stopping: the ranks' and launcher's interrupt tracebacks go to the log only
    pumps = []
    if logged:
        lock = threading.Lock()

        class Locked:  # both pumps write to one log file
            def write(self, data):
                with lock:
                    log.write(data)

            def flush(self):
                with lock:
                    log.flush()

        pumps = [
            threading.Thread(
                target=_pump,
                args=(
                    proc.stdout,
                    Locked(),
                    _binary(sys.stdout),
                    lambda line: not muted.is_set() and not _DS_LOG.match(line),
                ),
                daemon=True,
            ),
            threading.Thread(
                target=_pump,
                args=(proc.stderr, Locked(), _binary(sys.stderr), lambda chunk: not muted.is_set()),
                daemon=True,
            ),
        ]
    for p in pumps:
        p.start()
    restore = _sigterm_interrupts()
    try:
        code = proc.wait()
    except BaseException:
        muted.set()
        say("stopping the training (rerun the same command to resume from its last checkpoint) ...")
        stop_group(proc.pid, marker, say)
        proc.wait()
        raise
    finally:
        for p in pumps:
            p.join(10)
        if log is not None:
            log.close()
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
    # the launcher has exited; a rank it could not stop would be left in the group
    stop_group(proc.pid, marker, say, grace=5.0)
    if pid_file is not None:
        pid_file.unlink(missing_ok=True)
    return code

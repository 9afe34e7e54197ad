"""The `alpaca-ds launch` tests: the CLI run from the repository with this virtualenv first on PATH, so that what
pdsh, ssh and sbatch start finds its python and deepspeed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.paths import ROOT
from helpers.training import ENV as TRAIN_ENV

ENV = {**TRAIN_ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alpaca_ds.cli", *args],
        cwd=ROOT,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

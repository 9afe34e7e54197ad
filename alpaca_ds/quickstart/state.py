"""RUN/quickstart.json: the settings a quickstart run is held to, the steps it has finished, and its invocations
(each with the machine and package versions it ran on)."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

from alpaca_ds.common.errors import UserError
from alpaca_ds.common.io import atomic_write_json
from alpaca_ds.quickstart.config import QuickstartConfig
from alpaca_ds.quickstart.layout import PATH_KEYS, STEPS, Paths


def _fingerprint(cfg: QuickstartConfig) -> dict:
    """The settings a run is held to: the config without out_dir and quick, its paths resolved."""
    data = cfg.model_dump(mode="json", exclude={"out_dir", "quick"})
    for *sections, key in PATH_KEYS:
        node = data
        for part in sections:
            node = node.get(part, {})
        if node.get(key) is not None:
            node[key] = str(Path(node[key]).expanduser().resolve())
    return data


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


class State:
    """RUN/quickstart.json: the settings of the run and the steps it has finished."""

    def __init__(self, paths: Paths, cfg: QuickstartConfig):
        self.path = paths.state
        fingerprint = _fingerprint(cfg)
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            if self.data.get("config") != fingerprint:
                keys = ", ".join(_diff_keys(self.data.get("config") or {}, fingerprint)) or "?"
                raise UserError(
                    f"{paths.root} holds a quickstart run with other settings ({keys}); rerun it with "
                    "the same ones to continue it, or pick another --out (or delete it to start over)"
                )
        else:
            self.data = {"config": fingerprint, "steps": {}, "invocations": []}

    def done(self, step: str) -> dict | None:
        return self.data["steps"].get(step)

    def forget_from(self, step: str) -> None:
        for later in STEPS[STEPS.index(step) :]:
            self.data["steps"].pop(later, None)

    def finish(self, step: str, seconds: float, info: dict) -> None:
        earlier = self.data.setdefault("interrupted", {}).pop(step, 0.0)
        self.data["steps"][step] = {
            "seconds": round(seconds + earlier, 2),
            "interrupted_seconds": round(earlier, 2),
            "finished": now(),
            **info,
        }
        self.save()

    def interrupted(self, step: str, seconds: float) -> None:
        """Time spent in a step that was interrupted (it continues in the next run; its total counts both)."""
        spent = self.data.setdefault("interrupted", {})
        spent[step] = round(spent.get(step, 0.0) + seconds, 2)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.data)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def environment() -> dict:
    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "alpaca-ds": version("alpaca-ds"),
        "torch": version("torch"),
        "deepspeed": version("deepspeed"),
        "transformers": version("transformers"),
    }

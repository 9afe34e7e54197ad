"""The training tests' launches: the tiny recipe on 2 CPU ranks through the deepspeed launcher, its metrics, and
the LoRA settings the LoRA tests add to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from alpaca_ds.common.serving import free_port
from alpaca_ds.config import load_config
from alpaca_ds.train.config import TrainConfig
from helpers.paths import ROOT

RECIPE = ROOT / "launch" / "recipes" / "tiny.yaml"
FSDP_REFERENCE = ROOT / "tests" / "helpers" / "fsdp_reference.py"  # torch FSDP, the reference for ZeRO-3
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
FROM_INIT_STEPS = 24  # what the `from_init` fixture's runs train
# lm_head among the targets: on a random model, adapters on attention alone barely move the loss in 24 steps
LORA = (
    "model.lora.r=8",
    "model.lora.alpha=16",
    "model.lora.dropout=0",
    "optim.lr=1e-2",
    "model.lora.target_modules=[q_proj, v_proj, lm_head]",
)


def as_sets(overrides) -> list[str]:
    """Config overrides as `--set key=value` arguments."""
    return [a for item in overrides for a in ("--set", item)]


def deepspeed_command(*overrides: str, gpus: int = 2, port: int | None = None) -> list[str]:
    """The deepspeed launcher starting alpaca_ds.train with the tiny recipe on `gpus` local ranks."""
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(gpus)]
    return [*launcher, "--master_port", str(port or free_port()), "--module", "alpaca_ds.train", *_recipe(overrides)]


def fsdp_command(*overrides: str) -> list[str]:
    """torch.distributed.run starting the torch FSDP reference trainer with the tiny recipe on 2 local ranks."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    return [*launcher, "--master_port", str(free_port()), str(FSDP_REFERENCE), *_recipe(overrides)]


def _recipe(overrides) -> list[str]:
    return ["--config", str(RECIPE), *as_sets(overrides)]


def launch(
    *overrides: str, wait: bool = True, port: int | None = None
) -> subprocess.Popen | subprocess.CompletedProcess:
    command = deepspeed_command(*overrides, port=port)
    if wait:
        return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(
        command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def launch_and_kill(run: Path, args: tuple[str, ...], after_step: int) -> int:
    """Launch a run, SIGKILL every process of it once it has logged `after_step` steps; the last step logged."""
    proc = launch(*args, wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = [r for r in metrics(run) if "loss" in r] if (run / "metrics.jsonl").exists() else []
        if done and done[-1]["step"] >= after_step:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return max(r["step"] for r in metrics(run) if "loss" in r)


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in metrics(run) if "loss" in r]


def worst_relative(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) == FROM_INIT_STEPS
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def lora_settings(run: Path, from_init, *extra: str) -> TrainConfig:
    """The tiny recipe from the saved weights with LORA's adapters, writing to `run`."""
    return load_config(TrainConfig, RECIPE, [f"output_dir={run}", *from_init, *LORA, *extra])

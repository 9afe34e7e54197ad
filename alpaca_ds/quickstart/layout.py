"""Where the quickstart keeps things: the run directory's paths, each step's stage config (written to
configs/ for running a step by hand) and the hand commands; shared by the pipeline and its report."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from alpaca_ds.common.io import atomic_write_bytes
from alpaca_ds.config import Schema, dump_config
from alpaca_ds.quickstart.config import QuickstartConfig

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "launch" / "recipes" / "quickstart.yaml"
PATH_KEYS = (
    ("recipe",),
    ("generate", "seed_tasks"),
    ("data", "tokenizer"),
    ("train", "ds_config"),
    ("answer", "eval_set"),
)
STEPS = ("generate", "data", "train", "export", "answer", "judge")
GENERATOR = "quickstart-tiny"  # the `generator` name of the model's answers
REFERENCE = "reference"  # ... and of the eval set's own outputs
HAND_PORT = 8765  # the teacher port the configs in configs/ name (by hand: teacher serve --port 8765)
HAND_URL = f"http://127.0.0.1:{HAND_PORT}/v1"
STATE = "quickstart.json"


def default_config() -> dict:
    """launch/recipes/quickstart.yaml with its paths taken from the repository, so it runs from any directory."""
    data = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    for *sections, key in PATH_KEYS:
        node = data
        for part in sections:
            node = node.get(part, {})
        if node.get(key) is not None and not Path(node[key]).is_absolute():
            node[key] = str(REPO / node[key])
    return data


class Paths:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.configs = self.root / "configs"
        self.generated = self.root / "generated"
        self.tokenized = self.root / "tokenized"
        self.run = self.root / "run"
        self.export = self.root / "export"
        self.eval = self.root / "eval"
        self.answers = self.eval / GENERATOR / "model_outputs.json"
        self.reference = self.eval / REFERENCE / "model_outputs.json"
        self.judge = self.eval / "judge"
        self.state = self.root / STATE
        self.report = self.root / "report.md"
        self.train_pid = self.root / "train.pid.json"
        self.train_log = self.run / "train.log"

    def output(self, step: str) -> Path:
        """The file whose presence says a finished step's output is still there."""
        return {
            "generate": self.generated / "regen.json",
            "data": self.tokenized / "manifest.json",
            "train": self.run / "final" / "config.json",
            "export": self.export / "config.json",
            "answer": self.answers,
            "judge": self.judge / "winrate.json",
        }[step]


def stage_configs(cfg: QuickstartConfig, paths: Paths, base_url: str) -> dict[str, Schema]:
    """Each step's config, exactly as its command would load it (the teacher at `base_url`)."""
    api = {"base_url": base_url, "api_key_env": None}
    return cfg.stage_configs(
        {
            "generate": {"out_dir": str(paths.generated), "api": api},
            "data": {"input": str(paths.generated / "regen.json"), "output": str(paths.tokenized)},
            "train": {"output_dir": str(paths.run), "data": {"path": str(paths.tokenized)}},
            "answer": {"model": str(paths.export), "output": str(paths.answers), "generator": GENERATOR},
            "judge": {"a": str(paths.reference), "b": str(paths.answers), "out_dir": str(paths.judge), "api": api},
        }
    )


_HEADERS = {
    "generate": "# `alpaca-ds generate --config {path}`, against `alpaca-ds teacher serve --port {port}` (the local "
    "teacher simulator)",
    "data": "# `alpaca-ds data build --config {path}`",
    "train": "# `DS_ACCELERATOR=cpu alpaca-ds train --config {path} --num-gpus {ranks}` (CPU ranks)",
    "answer": "# `alpaca-ds evaluate answer --config {path}`",
    "judge": "# `alpaca-ds evaluate judge --config {path}`, the judge being `alpaca-ds teacher serve --port {port}` "
    "(its judge mode)",
}


def write_hand_configs(cfg: QuickstartConfig, paths: Paths) -> dict[str, Path]:
    """configs/<step>.yaml: the configs of this run for running each step by hand (teacher on port 8765)."""
    paths.configs.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, config in stage_configs(cfg, paths, HAND_URL).items():
        path = paths.configs / f"{name}.yaml"
        header = _HEADERS[name].format(path=path, port=HAND_PORT, ranks=cfg.ranks)
        text = (
            f"{header}\n# Written by `alpaca-ds quickstart` for the run in {paths.root}; the quickstart itself "
            "uses these settings with its own loopback port.\n" + dump_config(config)
        )
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_bytes(path, text.encode("utf-8"))
        written[name] = path
    return written


def hand_commands(
    cfg: QuickstartConfig, paths: Paths, settings: dict[str, Schema], checkpoint: str | None = None
) -> list[str]:
    """The commands that run each step by hand, with this run's paths (`settings`: stage_configs' at HAND_URL)."""
    c = paths.configs
    ckpt = checkpoint or str(paths.run / "checkpoints" / "step-NNNNNNNN")
    generate = settings["generate"]
    return [
        f"alpaca-ds teacher serve --port {HAND_PORT} --seeds {shlex.quote(generate.seed_tasks)} --seed "
        f"{generate.seed} &   # the local teacher simulator (and judge)",
        f"alpaca-ds generate --config {c / 'generate.yaml'}",
        f"alpaca-ds data build --config {c / 'data.yaml'}",
        f"DS_ACCELERATOR=cpu alpaca-ds train --config {c / 'train.yaml'} --num-gpus {cfg.ranks}",
        f"alpaca-ds export {ckpt} {paths.export}",
        f"alpaca-ds evaluate answer --config {c / 'answer.yaml'}",
        f"# the judge's other side, {paths.reference}: the eval tasks' own outputs (the quickstart writes it)",
        f"alpaca-ds evaluate judge --config {c / 'judge.yaml'}",
        f"alpaca-ds evaluate winrate {paths.judge / 'annotations.json'}",
        "kill %1   # the teacher simulator",
    ]


def short(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path

"""One-way imports: each stage imported alone in a fresh interpreter pulls in only what it may."""

from __future__ import annotations

import pytest

from helpers.imports import modules_after_import
from helpers.paths import ROOT


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("alpaca_ds.dataset.build", {"deepspeed"}),
        ("alpaca_ds.dataset.collate", {"deepspeed"}),
        ("alpaca_ds.dataset.inspect", {"deepspeed", "torch"}),
        # the builder's worker processes load only this: no transformers, no torch
        ("alpaca_ds.dataset.encode", {"deepspeed", "torch", "transformers"}),
        ("alpaca_ds.cli", {"deepspeed", "torch", "transformers"}),
        ("alpaca_ds.config", {"torch", "transformers"}),
        # each stage's schema loads without the stage's heavy imports, so `--help` and config errors are instant
        *[
            (f"alpaca_ds.{stage}.config", {"deepspeed", "torch", "transformers"})
            for stage in ("api", "dataset", "generate", "train", "evaluate", "quickstart")
        ],
    ],
)
def test_stage_imports(module, forbidden):
    loaded = modules_after_import(module)
    assert module in loaded
    assert not forbidden & {m.split(".")[0] for m in loaded}


def _imported(path) -> set[str]:
    """The alpaca_ds modules a source file imports (at top level or inside functions)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("alpaca_ds")}


@pytest.mark.parametrize(
    "room, forbidden",
    [
        ("generate", ("alpaca_ds.evaluate",)),
        ("evaluate", ("alpaca_ds.generate",)),
        # the API layer serves both and knows neither (nor the simulator that stands in for the API)
        ("api", ("alpaca_ds.generate", "alpaca_ds.evaluate", "alpaca_ds.simulator")),
    ],
)
def test_rooms_do_not_import_each_other(room, forbidden):
    for path in sorted((ROOT / "alpaca_ds" / room).rglob("*.py")):
        bad = sorted(m for m in _imported(path) if m.startswith(forbidden))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("alpaca_ds.generate.run", "alpaca_ds.evaluate"),
        ("alpaca_ds.evaluate.judge", "alpaca_ds.generate"),
        ("alpaca_ds.evaluate.answers", "alpaca_ds.generate"),
    ],
)
def test_stages_load_without_each_other(module, forbidden):
    loaded = modules_after_import(module)
    assert not {m for m in loaded if m.startswith(forbidden)}


def test_api_imports_no_torch():
    modules = ", ".join(
        f"alpaca_ds.api.{p.stem}" for p in (ROOT / "alpaca_ds" / "api").glob("*.py") if p.stem != "__init__"
    )
    loaded = {m.split(".")[0] for m in modules_after_import(f"{modules}, openai, tiktoken, aiolimiter, filelock")}
    assert "openai" in loaded and not {"torch", "transformers", "deepspeed"} & loaded


def test_nothing_imports_cli():
    for path in (ROOT / "alpaca_ds").rglob("*.py"):
        if path.name != "cli.py":  # running the command in a subprocess (the simulator's process) is not importing it
            assert not {m for m in _imported(path) if m.startswith("alpaca_ds.cli")}, path


def test_no_import_cycles():
    """No two modules import each other, directly or through others (imports inside functions count too)."""
    modules = {}
    for path in (ROOT / "alpaca_ds").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: {m for m in _imported(path) if m in modules and m != name} for name, path in modules.items()}
    cycles, done = [], set()

    def visit(name, trail):
        if name in trail:
            cycles.append(trail[trail.index(name) :] + [name])
            return
        if name in done:
            return
        for nxt in sorted(graph[name]):
            visit(nxt, trail + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)

"""The test suite's own layout (tests/README.md): test modules import helpers, never each other nor a conftest, and
every test file's name is unique (pytest imports them by base name, with no __init__.py in test folders)."""

from __future__ import annotations

import ast
from collections import Counter

from helpers.paths import ROOT

TESTS = ROOT / "tests"


def imported_top_names(path) -> set[str]:
    """The top-level module names a source file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
    return names


def test_no_test_module_imports_another_or_a_conftest():
    test_modules = {p.stem for p in TESTS.rglob("test_*.py")}
    bad = {}
    for path in sorted(TESTS.rglob("*.py")):
        wrong = sorted(imported_top_names(path) & (test_modules | {"conftest"}))
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    assert not bad, f"move what these import into tests/helpers/ or a conftest fixture: {bad}"


def test_test_file_names_are_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, count in names.items() if count > 1]


def test_tests_live_in_unit_or_integration():
    stray = [
        str(p.relative_to(ROOT))
        for p in TESTS.rglob("test_*.py")
        if p.relative_to(TESTS).parts[0] not in ("unit", "integration")
    ]
    assert not stray, "a test file goes in tests/unit/<stage>/ or tests/integration/"

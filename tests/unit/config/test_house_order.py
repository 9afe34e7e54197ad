"""The package's house order (README "Layout"): files short enough to read in one sitting, and every package's
docstring naming each of its modules, so a newcomer finds where a thing lives from the package itself."""

from __future__ import annotations

import ast

import pytest

from helpers.paths import ROOT

PACKAGE = ROOT / "alpaca_ds"
MAX_LINES = 400
PACKAGES = sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))


def test_no_module_is_longer_than_one_sitting():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {path: n for path, n in lengths.items() if n > MAX_LINES}
    assert not long, f"split these by job (at most {MAX_LINES} lines a file): {long}"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_the_package_docstring_names_each_module(package):
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    unnamed = [p.name for p in sorted(package.glob("*.py")) if p.name != "__init__.py" and p.name not in docstring]
    assert not unnamed, f"{package.relative_to(ROOT)}/__init__.py: say in its docstring what lives in {unnamed}"

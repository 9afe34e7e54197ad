"""Which modules an import pulls in, seen from a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

from helpers.paths import ROOT


def modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())

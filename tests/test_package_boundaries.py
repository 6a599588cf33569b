"""allocator/, agent/ and contract/ run on hosts without Django: importing them must not load it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["allocator", "agent", "contract", "demo"])
def test_it_imports_without_django(package: str) -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {package}\n"
        f"for mod in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    if not mod.name.endswith('__main__'):\n"
        "        importlib.import_module(mod.name)\n"
        "banned = {'django', 'rest_framework', 'planner'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"
